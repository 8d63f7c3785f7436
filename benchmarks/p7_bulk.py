"""P7 bulk operations (issue #13): an initial sync of 100 000 orders through one bulk operation, paged GraphQL
and paged REST at the Standard plan, side by side in one run; then the peak RSS of bulk syncs of 10 000 vs
200 000 orders.

One simulator process holds an identical shop per transport (seed 7, the simulator's default orders: 1 to 5
line items each, 2.6 on average, as a typical shop has), all on the "standard" plan at TIME_SCALE, so that each
has its own buckets and its own bulk operations. Each sync is `SyncEngine.fetch` then `SyncEngine.load` of an
`initial` orders sync, in a fresh child process (`python -m benchmarks.p7_bulk child`) that reports its stage
times, its VmHWM (peak resident set, at the end of the fetch and of the load) and the cost of every GraphQL
answer (`actualQueryCost`, read by wrapping the `request_json` of the client of each source the engine builds).
The syncs run one after another, so they do not share the CPU; DynamoDB Local and the simulator run in their
own processes and are not counted in the RSS.
- bulk: a GraphQL connection with `SyncOptions(bulk_threshold=1)` (any size is exported in bulk; the default
  threshold, 10 000, would do the same for these shops): plan (count), `bulkOperationRunQuery`, polls on the
  engine's default schedule (1 s doubling to 30 s, real seconds), the JSONL result read and staged as pages of
  250 records.
- paged GraphQL: the same with `bulk_threshold=None`: 4 created_at slices of pages sized by cost, sharing the
  shop's cost pacer, nested line items paged to their end.
- paged REST: `SyncService.add_connection(..., api="rest")`, default options: 4 slices of 250-order pages.
Requests = every request the simulator counted for the shop (GraphQL, REST, bulk result downloads); records
stored = `RecordTable.count` after the load, which must equal the shop's own count.

TIME_SCALE = 100 runs every Shopify clock of the simulator 100 times faster: the REST bucket leaks 200 requests/s
(Standard: 2), GraphQL restores 10 000 points/s (Standard: 100), a bulk operation may process 500 000 objects/s
(the simulator's BulkConfig: 5 000). Paged GraphQL of 100 000 orders needs ~2.4 M cost points: 6.6 h of restore
at time_scale 1, ~4 min at 100. 100 is about the largest scale at which paged GraphQL is still bound by its
cost bucket rather than by this 2-core box (the simulator renders and the client stages ~400 orders/s of it; a
faster clock would time our CPU, not Shopify's limit). At 100 the other two transports are bound by CPU, not by
Shopify: REST's bucket allows its ~400 requests in ~2 s; the simulator's export worker writes ~2 300–3 600 JSONL
objects/s here, below even the unscaled 5 000/s, so the bulk row runs about as fast as it would at time_scale 1
while REST runs far faster than Standard allows. The output therefore shows, beside the measured ratios, how
much of each fetch Shopify's limits account for (limit ÷ fetch: 1.0 = bound by Shopify), and the same ratio by
Shopify's limits alone at time_scale 1 ("Shopify floor": REST (requests − 40) ÷ 2/s, GraphQL (points − 2 000)
÷ 100/s, bulk 1 s CREATED + objects ÷ 5 000/s plus its points), from the requests, points and objects this run
measured. `--time-scale 1 --transports bulk rest --rss-orders` measures bulk against REST at Standard's real
rates (~16 min).

The whole run takes ~26 min on a shared 2-core box, whatever the time_scale makes of the fetches: loading
510 000 orders into DynamoDB Local takes ~7 min and counting them back (`RecordTable.count`, 1 MB a query) ~7.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

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
from shopify_pipeline.simulator.bucket import GRAPHQL_BUCKET_SECONDS
from shopify_pipeline.simulator.config import GRAPHQL_RESTORE_RATES, PLANS, BulkConfig

ORDERS = 100_000
RSS_SIZES = (10_000, 200_000)
PLAN = "standard"
TIME_SCALE = 100.0
SEED = 7
TRANSPORTS = ("bulk", "graphql", "rest")
LABELS = {"bulk": "bulk operation", "graphql": "paged GraphQL", "rest": "paged REST"}


def _observe_costs(engine, answers: list[float]) -> None:
    """Append the actualQueryCost of every GraphQL answer of the sources `engine` builds to `answers`."""
    build = engine.page_source

    def observed_source(connection, sync_type=None):
        source = build(connection, sync_type)
        request_json = source.client.request_json

        def observed(method: str, url: str, json_body: dict | None = None, paced: bool = True):
            document, answer = request_json(method, url, json_body, paced=paced)
            cost = (document.get("extensions") or {}).get("cost") if isinstance(document, dict) else None
            if cost is not None:
                answers.append(float(cost.get("actualQueryCost") or 0))
            return document, answer

        source.client.request_json = observed
        return source

    engine.page_source = observed_source


def child() -> int:
    """One initial orders sync (fetch, then load) of $BENCH_USER, reported as a `BENCH {json}` line."""
    from shopify_pipeline.settings import Settings, ShopifySettings
    from shopify_pipeline.sync.engine import SyncEngine, SyncOptions

    before = peak_rss_kb()
    transport, user = os.environ["BENCH_TRANSPORT"], os.environ["BENCH_USER"]
    options = SyncOptions(bulk_threshold=1) if transport == "bulk" else SyncOptions(bulk_threshold=None)
    engine = SyncEngine(Settings.from_env(), ShopifySettings.from_env(), options)
    answers: list[float] = []
    _observe_costs(engine, answers)
    seen: dict[str, float] = {}

    def progress(message: str) -> None:
        if "COMPLETED" in message:  # the poll that found the bulk operation done
            seen.setdefault("completed_seen", time.time())

    started, started_wall = time.monotonic(), time.time()
    fetched = engine.fetch(user, "initial", "orders", progress)
    fetch_seconds = time.monotonic() - started
    fetch_rss = peak_rss_kb()
    loaded = engine.load(user, "initial", "orders")
    report = {
        "fetch_seconds": fetch_seconds,
        "load_seconds": time.monotonic() - started - fetch_seconds,
        "fetch_started": started_wall,
        "fetch_ended": started_wall + fetch_seconds,
        **seen,
        "fetched": fetched.records,
        "pages": fetched.pages,
        "written": loaded.records_written,
        "finished": loaded.finished,
        "points": sum(answers),
        "queries": len(answers),
        "fetch_peak_rss_kb": fetch_rss,
        "peak_rss_kb": peak_rss_kb(),
        "rss_after_imports_kb": before,
    }
    print("BENCH " + json.dumps(report), flush=True)
    return 0 if loaded.finished else 1


def _simulator(sim: RemoteSimulator, path: str):
    with urllib.request.urlopen(f"{sim.base_url}/_simulator/shops/{path}", timeout=120) as answer:
        return json.loads(answer.read())


def _sync(endpoint: str, sim: RemoteSimulator, shop: str, transport: str) -> dict:
    """An initial orders sync of `shop` through `transport` in a child process; its report, the simulator's
    counters for the shop and the records stored (checked against the shop's count)."""
    settings = fresh_settings(endpoint)
    user = f"user-{shop}"
    service = service_for(settings, shopify_settings())
    service.add_connection(user, sim.shop_url(shop), f"literal:{sim.tokens[shop]}",
                           api="rest" if transport == "rest" else "graphql")
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": endpoint, "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix,
           "SHOPIFY_ALLOW_LOCAL_SHOPS": "1", "BENCH_USER": user, "BENCH_TRANSPORT": transport}
    out = subprocess.run([sys.executable, "-m", "benchmarks.p7_bulk", "child"], env=env, capture_output=True,
                         text=True, timeout=3 * 3600)
    line = next((text for text in out.stdout.splitlines() if text.startswith("BENCH ")), None)
    if line is None or out.returncode != 0:
        raise RuntimeError(f"the {transport} sync child failed: {out.stdout[-2000:]} {out.stderr[-3000:]}")
    report = json.loads(line[6:])
    report["stats"] = sim.stats(shop)
    report["operations"] = _simulator(sim, f"{shop}/bulk")["bulk_operations"]
    counting = time.monotonic()
    report["stored"] = RecordTable(service.engine.dynamodb, settings, "orders").count(user)
    report["count_seconds"] = time.monotonic() - counting
    in_shop = report["stats"]["records"]["orders"]
    if not report["stored"] == report["fetched"] == in_shop:
        raise AssertionError(f"{transport}: {report['stored']} orders stored, {report['fetched']} fetched, but the "
                             f"shop has {in_shop}")
    return report


def _floor(transport: str, report: dict) -> float:
    """Seconds Shopify's Standard limits alone impose on what this sync asked, at time_scale 1."""
    size, leak = PLANS[PLAN]
    restore = GRAPHQL_RESTORE_RATES[PLAN]
    points = max(0.0, report["points"] - GRAPHQL_BUCKET_SECONDS * restore) / restore
    if transport == "rest":
        return max(0, report["stats"]["total_requests"] - size) / leak
    if transport == "graphql":
        return points
    bulk = BulkConfig()
    objects = sum(int(operation["objectCount"]) for operation in report["operations"])
    return points + bulk.created_seconds + objects / bulk.objects_per_second


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _bulk_timeline(report: dict) -> str:
    """Where the bulk fetch spent its time (the simulator's createdAt and completedAt are whole seconds)."""
    operation = report["operations"][-1]
    created, completed = _epoch(operation["createdAt"]), _epoch(operation["completedAt"])
    objects = int(operation["objectCount"])
    seen = report.get("completed_seen")
    if seen is None:
        return "no progress message said COMPLETED"
    return (f"the operation ran ~{completed - created:.0f} s (createdAt → completedAt; {objects:,} objects, "
            f"{int(operation['rootObjectCount']):,} orders, {int(operation['fileSize']) / 1e6:.0f} MB: "
            f"~{objects / max(completed - created, 1):,.0f} objects/s); the engine's poll saw COMPLETED "
            f"~{seen - completed:.0f} s after completedAt; reading and staging the result took "
            f"{report['fetch_ended'] - seen:.1f} s ({report['pages']} pages of 250)")


def _row(transport: str, report: dict, time_scale: float) -> dict:
    stats = report["stats"]
    floor = _floor(transport, report)
    return {
        "transport": LABELS[transport],
        "orders in shop": stats["records"]["orders"],
        "stored": report["stored"],
        "fetch s": report["fetch_seconds"],
        "load s": report["load_seconds"],
        "sync s": report["fetch_seconds"] + report["load_seconds"],
        "requests": stats["total_requests"],
        "by endpoint": " ".join(f"{name} {n}" for name, n in sorted(stats["requests"].items())),
        "GraphQL points": int(report["points"]) if transport != "rest" else "n/a",
        "THROTTLED / 429s": f"{stats['graphql_throttled']} / {stats['throttled']}",
        "peak RSS MB fetch / sync": f"{report['fetch_peak_rss_kb'] / 1024:.1f} / {report['peak_rss_kb'] / 1024:.1f}",
        "Shopify limit ÷ fetch": floor / time_scale / report["fetch_seconds"],
        "Shopify floor at time_scale 1 s": floor,
    }


def _compare(rows: dict[str, dict]) -> list[str]:
    """Bulk's speed-up over each paged transport measured, best first, by fetch, whole sync and Shopify floor."""
    bulk = rows["bulk"]
    paged = [transport for transport in ("graphql", "rest") if transport in rows]
    lines = []
    for column, what in (("fetch s", "fetch"), ("sync s", "whole sync (fetch + load)"),
                         ("Shopify floor at time_scale 1 s", "Shopify's limits alone at time_scale 1")):
        ranked = sorted(paged, key=lambda t: rows[t][column])
        others = "".join(f" ({LABELS[t]}: {rows[t][column] / bulk[column]:.2f}×)" for t in ranked[1:])
        lines.append(f"- {what}: bulk {bulk[column]:,.1f} s vs the best paged transport measured "
                     f"({LABELS[ranked[0]]}) {rows[ranked[0]][column]:,.1f} s = "
                     f"**{rows[ranked[0]][column] / bulk[column]:.2f}×**{others}")
    return lines


def _rss(endpoint: str, sim: RemoteSimulator, sizes: tuple[int, ...]) -> None:
    rows = []
    counted = {}
    for n in sizes:
        report = _sync(endpoint, sim, f"rss{n}", "bulk")
        counted[n] = report["count_seconds"]
        rows.append({"orders": n, "stored": report["stored"], "fetch s": report["fetch_seconds"],
                     "load s": report["load_seconds"], "peak RSS MB (fetch)": report["fetch_peak_rss_kb"] / 1024,
                     "peak RSS MB (sync)": report["peak_rss_kb"] / 1024,
                     "RSS after imports MB": report["rss_after_imports_kb"] / 1024})
        print(table(rows[-1:], list(rows[-1])) + f"\nbulk fetch of {n:,}: {_bulk_timeline(report)}", flush=True)
    print("counting the stored records (RecordTable.count) took "
          + ", ".join(f"{seconds:.0f} s ({n:,})" for n, seconds in counted.items()), flush=True)
    ratio = rows[-1]["peak RSS MB (sync)"] / rows[0]["peak RSS MB (sync)"]
    growth = rows[-1]["peak RSS MB (sync)"] - rows[0]["peak RSS MB (sync)"]
    print(f"\nP7 RSS: bulk sync peak RSS {sizes[-1]:,} ÷ {sizes[0]:,} orders = **{ratio:.3f}×** (target ≤ 1.2); "
          f"{growth:+.1f} MB for {sizes[-1] / sizes[0]:.0f}× the orders\n" + table(rows, list(rows[0])), flush=True)


def run(orders: int = ORDERS, rss_sizes: tuple[int, ...] = RSS_SIZES, time_scale: float = TIME_SCALE,
        transports: tuple[str, ...] = TRANSPORTS) -> None:
    header("P7 bulk")
    size, leak = PLANS[PLAN]
    restore = GRAPHQL_RESTORE_RATES[PLAN]
    sizes = ", ".join(f"{n:,}" for n in rss_sizes) or "none"
    print(f"{PLAN} plan at time_scale {time_scale:g} for every shop: REST bucket {size} leaking "
          f"{leak * time_scale:g}/s, GraphQL {GRAPHQL_BUCKET_SECONDS * restore:g} points restoring "
          f"{restore * time_scale:g}/s, bulk up to {BulkConfig().objects_per_second * time_scale:g} objects/s "
          f"(Standard at time_scale 1: {leak:g}/s, {restore:g}/s, {BulkConfig().objects_per_second:g}/s). "
          f"{orders:,} orders per transport shop (seed {SEED}); bulk RSS at {sizes}.",
          flush=True)
    shops = [{"name": t, "token": f"shpat_{t}", "orders": orders, "seed": SEED, "plan": PLAN} for t in transports]
    shops += [{"name": f"rss{n}", "token": f"shpat_rss{n}", "orders": n, "seed": SEED, "plan": PLAN}
              for n in rss_sizes]
    with dynamodb() as endpoint, RemoteSimulator(shops, time_scale=time_scale) as sim:
        reports = {}
        for transport in transports:
            reports[transport] = _sync(endpoint, sim, transport, transport)
            row = _row(transport, reports[transport], time_scale)
            print(table([row], list(row)), flush=True)
        rows = {transport: _row(transport, report, time_scale) for transport, report in reports.items()}
        print(f"\nP7 summary ({orders:,} orders, {PLAN} plan, time_scale {time_scale:g})\n"
              + table(list(rows.values()), list(next(iter(rows.values())))), flush=True)
        print("counting the stored records (RecordTable.count) took "
              + ", ".join(f"{report['count_seconds']:.0f} s ({t})" for t, report in reports.items()), flush=True)
        if "bulk" in reports:
            print(f"bulk fetch: {_bulk_timeline(reports['bulk'])}", flush=True)
        if "bulk" in reports and len(reports) > 1:
            print("\nBulk speed-up (target ≥ 5× the best paged transport at the same plan):\n"
                  + "\n".join(_compare(rows)), flush=True)
        if rss_sizes:
            _rss(endpoint, sim, rss_sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="P7 bulk vs paged syncs, and bulk peak RSS (see the docstring).")
    parser.add_argument("--orders", type=int, default=ORDERS, help=f"orders per transport shop ({ORDERS:,})")
    parser.add_argument("--rss-orders", type=int, nargs="*", default=list(RSS_SIZES),
                        help="shop sizes of the bulk RSS syncs, smallest first (none: skip)")
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE, help=f"the simulator's ({TIME_SCALE:g})")
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS),
                        help="the syncs compared (all three by default)")
    args = parser.parse_args(argv)
    run(args.orders, tuple(args.rss_orders), args.time_scale, tuple(args.transports))
    return 0


if __name__ == "__main__":
    sys.exit(child() if sys.argv[1:] == ["child"] else main())
