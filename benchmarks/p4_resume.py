"""P4 resume: pages fetched again after SIGKILL of a sync process at random points.

A `shopify-pipeline sync` process (here: `python -m benchmarks.p4_resume child`, the same CLI sync with one
hook that appends every request URL to a log file, flushed before the request leaves) syncs 6 000 orders in
pages of 100 over 4 slices (plus plan at time_scale 10, 50 ms latency). It is killed with SIGKILL KILLS times
at random pages (and a random 0-300 ms after the page was reached), the lease is released as the runbook
says (`clear --release-lease`), and a last run finishes the sync.

A page fetched again is a URL requested twice: the first page of a slice is its created_at-bounded URL,
every later one its `page_info` next link, which the checkpoint keeps. Each URL is attributed to its slice
by the created_at bounds (in the query or inside the page_info), and each repeat to the kill before it.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, service_for, shopify_settings, table
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.sync.engine import SyncOptions

ORDERS = 6_000
PAGE = 100
KILLS = 6
USER = "user-p4"


def child() -> int:
    """The sync process: the CLI's sync, logging each request URL first."""
    from shopify_pipeline import cli
    from shopify_pipeline.shopify import client

    log = open(os.environ["BENCH_URL_LOG"], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    run_number = os.environ["BENCH_RUN"]
    original = client.ShopifyClient.get

    def get(self, url):
        log.write(f"{run_number}\t{url}\n")
        log.flush()
        return original(self, url)

    client.ShopifyClient.get = get
    return cli.main(["sync", "--user", USER, "--type", "initial", "--data-types", "orders"])


def _slice_key(url: str) -> tuple | None:
    query = parse_qs(urlsplit(url).query)
    if not urlsplit(url).path.endswith("/orders.json"):
        return None
    if "page_info" in query:
        token = query["page_info"][0]
        filters = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["filters"]
        low, high = filters.get("created_at_min"), filters.get("created_at_max")
    else:
        if query.get("limit") == ["1"]:
            return None  # the planning request (oldest order)
        low, high = (_epoch(query.get(name, [None])[0]) for name in ("created_at_min", "created_at_max"))
    return (-1 if low is None else low, 10**12 if high is None else high)


def _epoch(value: str | None) -> int | None:
    """An ISO query value as the epoch seconds the simulator keeps in page_info filters."""
    if value is None:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() // 1)


def run() -> None:
    header("P4 resume after SIGKILL")
    shop = {
        "name": "p4",
        "token": "shpat_p4",
        "orders": ORDERS,
        "seed": 21,
        "plan": "plus",
        "faults": {"latency_seconds": 0.05},
    }
    rng = random.Random(int(os.environ.get("BENCH_SEED", "7")))
    with dynamodb() as endpoint, RemoteSimulator([shop], time_scale=10) as sim, tempfile.TemporaryDirectory() as tmp:
        settings = fresh_settings(endpoint)
        service = service_for(settings, shopify_settings(), SyncOptions(), {USER: (sim.shop_url("p4"), "shpat_p4")})
        engine = service.engine
        url_log = Path(tmp) / "urls.log"
        prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
            "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix,
            "SHOPIFY_ALLOW_LOCAL_SHOPS": "1",
            "SHOPIFY_PAGE_SIZE": str(PAGE),
            "BENCH_URL_LOG": str(url_log),
        }
        total_pages = ORDERS // PAGE
        targets = sorted(rng.sample(range(2, total_pages - 4), KILLS))
        kills = []
        for run_number, target in enumerate(targets):
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.p4_resume", "child"],
                env={**env, "BENCH_RUN": str(run_number)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 90
            page = 0
            while time.monotonic() < deadline and process.poll() is None:
                page = engine.state.get_status(USER).get("orders", {}).get("page", 0)
                if page >= target:
                    break
                time.sleep(0.01)
            delay = rng.uniform(0, 0.3)
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                status = engine.state.get_status(USER).get("orders", {})
                kills.append(
                    {
                        "kill": run_number + 1,
                        "target page": target,
                        "delay ms": round(delay * 1000),
                        "stage at kill": status.get("stage"),
                        "pages saved at kill": status.get("page"),
                    }
                )
            else:
                process.wait()
            service.clear_sync_status(USER, "orders", release_lease=True)
        final_run = len(targets)
        final = subprocess.run(
            [sys.executable, "-m", "benchmarks.p4_resume", "child"],
            env={**env, "BENCH_RUN": str(final_run)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
        )
        status = engine.state.get_status(USER)["orders"]
        stored = RecordTable(engine.dynamodb, settings, "orders").count(USER)
        stats = sim.stats("p4")

        seen: dict[str, int] = {}
        slices: dict[tuple, int] = {}
        repeats = collections.Counter()  # (run, slice) -> pages fetched again in that run
        requests_by_slice = collections.Counter()
        for line in url_log.read_text().splitlines():
            run_text, url = line.split("\t", 1)
            key = _slice_key(url)
            if key is None:
                continue
            index = slices.setdefault(key, len(slices))
            requests_by_slice[index] += 1
            if url in seen:
                repeats[(int(run_text), index)] += 1
            seen[url] = seen.get(url, 0) + 1
        order = {key: i for i, key in enumerate(sorted(slices))}  # slice 0 has no lower bound
        rows = []
        for kill in kills:
            after = kill["kill"]  # the run after kill k is run number k
            per_slice = {order[key]: repeats[(after, index)] for key, index in slices.items()}
            rows.append(
                {
                    **kill,
                    "pages fetched again by the next run": sum(per_slice.values()),
                    "per slice": " ".join(f"s{s}:{n}" for s, n in sorted(per_slice.items())),
                    "max per slice": max(per_slice.values(), default=0),
                }
            )
        print(table(rows, list(rows[0])), flush=True)
        refetched = sum(repeats.values())
        print(
            f"\nfinal run exit code {final.returncode}; status {status['status']}; {stored} of {ORDERS} orders "
            f"stored; {len(kills)} kills; {refetched} pages fetched again in all "
            f"({refetched / max(1, len(kills)):.2f} per kill, target ≤ {SyncOptions().slices} per kill = 1 per slice); "
            f"max per slice per kill {max((r['max per slice'] for r in rows), default=0)}; "
            f"simulator: {stats['requests'].get('orders', 0)} order-page requests for {len(seen)} distinct pages "
            f"(+1 planning request per fresh plan).",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        sys.exit(child())
