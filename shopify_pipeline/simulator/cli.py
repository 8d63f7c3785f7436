"""`shopify-pipeline simulator`: run the Shopify Admin API simulator until Ctrl-C."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("the simulator is not built yet")
