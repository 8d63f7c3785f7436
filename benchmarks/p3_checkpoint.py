"""P3 checkpoint size: bytes of the checkpoint item while a sync of 100 000 orders runs, sampled when
1 000, 10 000, 50 000 and 100 000 orders have been fetched, and after the fetch.

Beside it, the seed's design ("store all orders in the checkpoint"), computed: the JSON bytes of the orders
fetched so far (each staged page's body minus its `{"orders":[...]}` wrapper and commas). DynamoDB refuses
items over 400 KB, so the seed's checkpoint stops working after a few dozen orders.

The simulator runs in its own process (unlimited plan: this measures bytes, not speed); pages of 250.
"""

from __future__ import annotations

import re
import threading

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, service_for, shopify_settings, table
from shopify_pipeline.sync.engine import SyncOptions

ORDERS = 100_000
MARKS = (1_000, 10_000, 50_000, 100_000)
USER = "user-p3"


def run() -> None:
    header("P3 checkpoint size")
    shop = {"name": "p3", "token": "shpat_p3", "orders": ORDERS, "seed": 3, "plan": "unlimited"}
    rows = []
    with dynamodb() as endpoint, RemoteSimulator([shop]) as sim:
        service = service_for(
            fresh_settings(endpoint), shopify_settings(), SyncOptions(), {USER: (sim.shop_url("p3"), "shpat_p3")}
        )
        engine = service.engine
        lock = threading.Lock()
        seed_bytes = {"orders": 0, "bytes": 0}
        marks = list(MARKS)
        original_put = engine.pages.put

        def put(key, number, body, records, url):
            original_put(key, number, body, records, url)
            with lock:
                # body = {"orders":[o1,o2,...]}: 13 bytes of wrapper and records - 1 commas.
                seed_bytes["bytes"] += len(body) - 13 - max(0, records - 1)
                seed_bytes["orders"] += records

        engine.pages.put = put

        def progress(message: str) -> None:
            match = re.search(r"\((\d+) orders so far\)", message)
            if not match:
                return
            fetched = int(match.group(1))
            with lock:
                due = [m for m in marks if fetched >= m]
                if not due:
                    return
                for m in due:
                    marks.remove(m)
                seed = dict(seed_bytes)
            size = engine.state.checkpoint_size(USER, "initial", "orders")
            rows.append(
                {
                    "when": f"{due[-1]:,} orders fetched (at {fetched:,})",
                    "checkpoint item bytes": size,
                    "seed's checkpoint bytes (computed)": f"{seed['bytes']:,} for {seed['orders']:,} orders",
                    "seed ÷ ours": f"{seed['bytes'] / size:,.0f}×",
                }
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)

        result = engine.fetch(USER, "initial", "orders", progress)
        size = engine.state.checkpoint_size(USER, "initial", "orders")
        rows.append(
            {
                "when": f"fetch done ({result.records:,} orders, {result.pages} pages)",
                "checkpoint item bytes": size,
                "seed's checkpoint bytes (computed)": f"{seed_bytes['bytes']:,} for {seed_bytes['orders']:,} orders",
                "seed ÷ ours": f"{seed_bytes['bytes'] / size:,.0f}×",
            }
        )
        state = engine.state.load_checkpoint(USER, "initial", "orders").state
        print(
            "checkpoint state after the fetch:",
            {k: v for k, v in state.items() if k != "slices"},
            f"+ {len(state['slices'])} slices like {state['slices'][-1]}",
            flush=True,
        )
        per_order = seed_bytes["bytes"] / max(1, seed_bytes["orders"])
        print(
            f"orders' JSON averages {per_order:,.0f} bytes: the seed's item passes DynamoDB's 400 KB limit "
            f"after ~{400 * 1024 / per_order:.0f} orders",
            flush=True,
        )
    print("\nP3 summary\n" + table(rows, list(rows[0])), flush=True)
