"""P5 memory: peak RSS of a whole engine sync (fetch and load) of 10 000 vs 100 000 orders.

Each sync runs in a fresh child process (`python -m benchmarks.p5_memory child`: the CLI's
`sync --type initial --data-types orders`) that reports its VmHWM (peak resident set, from /proc/self/status)
when it ends. The simulator runs in another process (unlimited plan, pages of 250), so its memory and render
cache are not counted; neither is DynamoDB Local's (Java).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.common import (
    RemoteSimulator,
    dynamodb,
    fresh_settings,
    header,
    peak_rss_kb,
    service_for,
    shopify_settings,
    table,
)
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.sync.engine import SyncOptions

SIZES = (10_000, 100_000)


def child() -> int:
    from shopify_pipeline import cli

    before = peak_rss_kb()
    code = cli.main(
        ["sync", "--user", os.environ["BENCH_USER"], "--type", "initial", "--data-types", "orders", "--json"]
    )
    print(
        "BENCH " + json.dumps({"code": code, "peak_rss_kb": peak_rss_kb(), "rss_after_imports_kb": before}), flush=True
    )
    return code


def run() -> None:
    header("P5 memory")
    shops = [{"name": f"m{n}", "token": f"shpat_m{n}", "orders": n, "seed": 5, "plan": "unlimited"} for n in SIZES]
    rows = []
    with dynamodb() as endpoint, RemoteSimulator(shops) as sim:
        for n in SIZES:
            settings = fresh_settings(endpoint)
            user = f"user-m{n}"
            service = service_for(
                settings, shopify_settings(), SyncOptions(), {user: (sim.shop_url(f"m{n}"), f"shpat_m{n}")}
            )
            prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
            env = {
                **os.environ,
                "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
                "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix,
                "SHOPIFY_ALLOW_LOCAL_SHOPS": "1",
                "BENCH_USER": user,
            }
            started = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.p5_memory", "child"],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            seconds = time.monotonic() - started
            line = next((text for text in out.stdout.splitlines() if text.startswith("BENCH ")), None)
            if line is None:
                raise RuntimeError(f"the sync child failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
            report = json.loads(line[6:])
            stored = RecordTable(service.engine.dynamodb, settings, "orders").count(user)
            rows.append(
                {
                    "orders": n,
                    "sync exit code": report["code"],
                    "stored": stored,
                    "seconds": round(seconds, 1),
                    "peak RSS MB": report["peak_rss_kb"] / 1024,
                    "RSS after imports MB": report["rss_after_imports_kb"] / 1024,
                }
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)
    ratio = rows[1]["peak RSS MB"] / rows[0]["peak RSS MB"]
    growth = rows[1]["peak RSS MB"] - rows[0]["peak RSS MB"]
    print(
        f"\nP5 summary: peak RSS 100k ÷ 10k = {ratio:.2f} (target ≤ 1.2); +{growth:.1f} MB for 10× the orders\n"
        + table(rows, list(rows[0])),
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        sys.exit(child())
