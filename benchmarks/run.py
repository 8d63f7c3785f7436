"""Run the benchmarks: `python -m benchmarks.run p1 p2 ... | all` (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

BENCHMARKS = {
    "p1": ("benchmarks.p1_fetch", "fetch efficiency vs the bucket's ceiling, beside fixed gaps and ShopifyAPI"),
    "p2": ("benchmarks.p2_load", "records/s into DynamoDB Local: BatchWriter vs boto3 batch_writer"),
    "p3": ("benchmarks.p3_checkpoint", "checkpoint item bytes at 1k/10k/100k orders vs the seed's"),
    "p4": ("benchmarks.p4_resume", "pages fetched again after SIGKILL of a sync process"),
    "p5": ("benchmarks.p5_memory", "peak RSS of a sync of 10k vs 100k orders"),
    "p6": ("benchmarks.p6_daily", "requests of a daily sync for 0/10/249/1000 changed orders"),
    "p7": ("benchmarks.p7_bulk", "100k-order initial sync: bulk vs paged GraphQL vs REST, standard plan; bulk RSS"),
    "p8": ("benchmarks.p8_graphql", "GraphQL cost points/s ÷ restore rate and THROTTLED, beside REST, standard plan"),
    "p9": ("benchmarks.p9_webhooks", "webhooks/s applied, p50/p99 delivery-to-DynamoDB latency, 10×/100× a busy shop"),
    "p10": ("benchmarks.p10_tight_bucket", "1 000 orders, 3-request bucket, 503s: requests vs pages + 2, tap-shopify"),
    "dagster": ("benchmarks.dagster_overhead", "one materialized partition vs the engine alone"),
    "fencing": ("benchmarks.fencing", "a staged page put, plain vs fenced by the lease (time, write units)"),
    "fleet": ("benchmarks.fleet", "10/100 users on Postgres + dagster-daemon: one daily tick (--users N… alone)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="+", choices=[*BENCHMARKS, "all"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    names = list(BENCHMARKS) if "all" in args.names else args.names
    for name in names:
        started = time.monotonic()
        importlib.import_module(BENCHMARKS[name][0]).run()
        print(f"[{name} took {time.monotonic() - started:.0f}s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
