"""P6 daily incremental: Shopify requests made by a daily sync when 0, 10, 249 or 1 000 orders changed.

Four identical shops (3 000 orders, plus plan at time_scale 10, pages of 250) each get an initial sync of
their orders; then n orders are updated in the simulator (`update_records`) and a daily sync runs. The
requests are the simulator's per-endpoint counter deltas around the daily sync alone.

The daily sync reads `orders.json?updated_at_min=<high-water mark − 1 h lookback>` (sorted by id, pages of
250) and the `destroy` events since the same moment; it skips the scope check, the count and the slicing.
"""

from __future__ import annotations

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, service_for, shopify_settings, table
from shopify_pipeline.sync.engine import SyncOptions

ORDERS = 3_000
CHANGES = (0, 10, 249, 1_000)


def _delta(after: dict, before: dict) -> dict:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before) if after.get(k, 0) != before.get(k, 0)
    }


def run() -> None:
    header("P6 daily incremental")
    shops = [{"name": f"d{n}", "token": f"shpat_d{n}", "orders": ORDERS, "seed": 6, "plan": "plus"} for n in CHANGES]
    rows = []
    with dynamodb() as endpoint, RemoteSimulator(shops, time_scale=10) as sim:
        for n in CHANGES:
            shop, user = f"d{n}", f"user-d{n}"
            service = service_for(
                fresh_settings(endpoint),
                shopify_settings(),
                SyncOptions(),
                {user: (sim.shop_url(shop), f"shpat_{shop}")},
            )
            initial = service.initial_sync(user, data_types=("orders",))
            assert initial.success, initial
            before = sim.stats(shop)
            initial_requests = before["total_requests"]
            if n:
                sim.update_records(shop, "orders", n, seed=n)
            before = sim.stats(shop)
            daily = service.daily_sync(user, data_types=("orders",))
            after = sim.stats(shop)
            result = daily.data_types["orders"]
            rows.append(
                {
                    "orders changed": n,
                    "daily requests": after["total_requests"] - before["total_requests"],
                    "by endpoint": _delta(after["requests"], before["requests"]),
                    "records fetched": result.records,
                    "pages": result.pages,
                    "success": daily.success,
                    "initial sync requests (for scale)": initial_requests,
                }
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print("\nP6 summary\n" + table(rows, list(rows[0])), flush=True)
