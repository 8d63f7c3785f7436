"""`shopify-pipeline …`: the command line for operators. Each subcommand is a thin call into a layer."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from shopify_pipeline.settings import Settings


def _local_dynamodb(args: argparse.Namespace) -> int:
    from shopify_pipeline.dynamo.local import LocalDynamoDB, ensure_jar

    if args.fetch_only:
        print(ensure_jar())
        return 0
    server = LocalDynamoDB(port=args.port, data_dir=Path(args.data_dir) if args.data_dir else None)
    server.start()
    storage = f"data in {args.data_dir}" if args.data_dir else "in memory"
    print(f"DynamoDB Local is running at {server.endpoint_url} ({storage}). Ctrl-C stops it.")
    print(f"  export AWS_ENDPOINT_URL_DYNAMODB={server.endpoint_url}", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server._process.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
        print("DynamoDB Local stopped.")
    return 0


def _create_tables(args: argparse.Namespace) -> int:
    from shopify_pipeline.dynamo.client import dynamodb_client
    from shopify_pipeline.dynamo.tables import create_tables

    settings = Settings.from_env()
    created = create_tables(dynamodb_client(settings), settings.tables)
    if args.json:
        print(json.dumps(created))
    else:
        for name, what in created.items():
            print(f"{name}: {what}")
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from shopify_pipeline.simulator.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopify-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    local = commands.add_parser("local-dynamodb", help="fetch and run AWS DynamoDB Local on loopback")
    local.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one; default 8000)")
    local.add_argument("--data-dir", help="keep data in this folder (default: in memory)")
    local.add_argument("--fetch-only", action="store_true", help="only fetch the jar and print where it is")
    local.set_defaults(func=_local_dynamodb)

    tables = commands.add_parser("create-tables", help="create every table (idempotent; waits for ACTIVE)")
    tables.add_argument("--json", action="store_true", help="print JSON")
    tables.set_defaults(func=_create_tables)

    simulator = commands.add_parser("simulator", help="run the local Shopify Admin API simulator")
    from shopify_pipeline.simulator.cli import add_arguments

    add_arguments(simulator)
    simulator.set_defaults(func=_simulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shopify_pipeline.errors import PipelineError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
