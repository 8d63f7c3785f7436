"""`shopify-pipeline simulator`: run the Shopify Admin API simulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

from shopify_pipeline.simulator.config import PLANS, ShopConfig
from shopify_pipeline.simulator.server import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's flags: shops from --shop (repeatable) or a JSON --config file."""
    parser.add_argument("--shop", action="append", default=[], metavar="NAME:TOKEN[:ORDERS[:PRODUCTS[:CUSTOMERS]]]",
                        help="a shop to serve (repeatable), e.g. acme:shpat_acme:10000")
    parser.add_argument("--config", help='JSON file: {"port": 0, "time_scale": 1, "shops": [{ShopConfig fields}]}')
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="rate-limit speed-up: 10 leaks the bucket ten times faster (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="data seed for --shop shops (default 0)")
    parser.add_argument("--plan", choices=sorted(PLANS), default="standard",
                        help="rate-limit plan for --shop shops (default standard)")
    parser.add_argument("--large-order-every", type=int, default=0,
                        help="every n-th order is a large one with hundreds of line items (default: none)")


def parse_shop(spec: str, seed: int, plan: str, large_order_every: int) -> ShopConfig:
    """A ShopConfig from "name:token[:orders[:products[:customers]]]"."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1] or len(parts) > 5:
        raise SystemExit(f"--shop {spec!r}: expected NAME:TOKEN[:ORDERS[:PRODUCTS[:CUSTOMERS]]]")
    try:
        counts = [int(part) for part in parts[2:]] + [0] * (5 - len(parts))
    except ValueError:
        raise SystemExit(f"--shop {spec!r}: counts must be whole numbers") from None
    return ShopConfig(name=parts[0], token=parts[1], orders=counts[0], products=counts[1], customers=counts[2],
                      seed=seed, plan=plan, large_order_every=large_order_every)


def build_simulator(args: argparse.Namespace) -> Simulator:
    """The Simulator the flags describe (flags override the config file's port and time scale)."""
    settings: dict[str, Any] = {}
    if args.config:
        settings = json.loads(Path(args.config).read_text())
    shops = [ShopConfig.from_dict(shop) for shop in settings.get("shops", [])]
    shops += [parse_shop(spec, args.seed, args.plan, args.large_order_every) for spec in args.shop]
    if not shops:
        shops = [parse_shop("demo:shpat_demo:1000:100:200", args.seed, args.plan, args.large_order_every)]
    port = args.port if args.port is not None else int(settings.get("port", 0))
    time_scale = args.time_scale if args.time_scale is not None else float(settings.get("time_scale", 1.0))
    return Simulator(shops, port=port, time_scale=time_scale)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; prints the base URL and each shop's URL and token. Returns 0."""
    simulator = build_simulator(args).start()
    print(f"Shopify simulator at {simulator.base_url} (time scale {simulator.time_scale}). Ctrl-C stops it.")
    for name, shop in simulator.shops.items():
        print(f"  {name}: {simulator.shop_url(name)}  token {shop.token}  ({shop.config.orders} orders, "
              f"{shop.config.products} products, {shop.config.customers} customers, {shop.config.plan})")
    print(f"  admin: {simulator.base_url}/_simulator/shops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
        print("Shopify simulator stopped.", flush=True)
    return 0
