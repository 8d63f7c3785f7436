"""P1 fetch efficiency: pages/s ÷ the bucket's leak rate, 429s and records lost, side by side.

One simulator process serves identical shops (same seed, 10 000 orders), one per client, so each client has
its own leaky bucket: the standard plan (40 requests, leaking 2/s) at time_scale 5 → 40 requests leaking
10/s, Retry-After 0.4 s, and 150 ms latency on every request. Our engine reads pages of 25 orders (400 pages;
at 250 a page, 400 pages would need 100 000 orders whose 2.4 MB pages the simulator renders at ~7 pages/s on
one core, below the 10/s ceiling, so the simulator, not the client, would be measured).

Rows:
- engine adaptive: SyncEngine.fetch, shared adaptive Pacer, 4 parallel created_at slices (the default).
- engine adaptive, 8 slices: the same with SyncOptions(slices=8) (what closes the gap to the ceiling:
  with 4 slices the fetch is bound by 4 requests in flight × ~0.4 s each, not by the bucket).
- engine fixed 24 s: the seed's policy scaled like the bucket. The seed waits 120 s a page on a bucket
  leaking 2/s, i.e. 240 leak intervals a request; at 10/s that is 24 s (= 120 s / time_scale). Runs
  during all the other rows, then its shop is frozen to stop it.
- engine fixed 0.1 s: a fixed gap tuned to exactly the leak rate (the best a fixed gap can do, if one
  knew the plan); not the seed's policy, shown for reference.
- ShopifyAPI 12.7.0 (the official library): sequential, limit 250, whole documents, its own behaviour on
  429 (none: pyactiveresource raises ClientError). Time-boxed: it builds objects at ~30 ms per order.
- ShopifyAPI stress: the same library where the bucket matters — a shop without latency, fields=id, limit
  25: first without any retry (counts how far it gets), then with the simplest retry (sleep Retry-After).

The ratio that counts the initial burst, *ideal s / actual s*, takes as ideal a client that spends the whole
bucket at once and then one request per leak interval: (accepted requests − bucket) ÷ leak seconds.
`python -m benchmarks.p1_fetch --engine-only` runs the engine's adaptive rows alone (~1.5 min).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, service_for, shopify_settings, table
from shopify_pipeline.errors import PermanentError
from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.shopify.client import shop_base_url
from shopify_pipeline.shopify.pacer import PACERS
from shopify_pipeline.sync.engine import SyncOptions

ORDERS = 10_000
PAGE = 25
TIME_SCALE = 5
LATENCY = 0.15
SEED_GAP = 120.0 / TIME_SCALE
SHOPIFYAPI_SECONDS = 25.0
# The best any client can do counts the initial burst: the bucket's size at once, then one per leak interval.
IDEAL = "ideal s / actual s (burst counted)"


def _shop(name: str, latency: float = LATENCY) -> dict:
    return {
        "name": name,
        "token": f"shpat_{name}",
        "orders": ORDERS,
        "seed": 5,
        "plan": "standard",
        "faults": {"latency_seconds": latency},
    }


def _staged_ids(service, user: str) -> set[int]:
    pages = service.engine.pages
    key = service.engine.staging_key(user, "initial", "orders")
    ids: set[int] = set()
    for page in pages.list(key):
        ids.update(order["id"] for order in parse_json(pages.body(key, page))["orders"])
    return ids


def _row(
    name: str,
    stats: dict,
    seconds: float,
    records: int,
    distinct: int,
    leak: float,
    size: int,
    note: str = "",
    stopped: bool = False,
) -> dict:
    total = stats["total_requests"]
    accepted = total - stats["throttled"]  # a 429 takes no room in the bucket
    pages = stats["requests"].get("orders", 0) - stats["throttled"]
    # The best any client can do: `size` requests at once, then one per leak interval.
    ideal = max(0.0, accepted - size) / leak
    return {
        "client": name,
        "seconds": round(seconds, 1),
        "requests": total,
        "pages": pages,
        "pages/s": pages / seconds,
        "accepted requests/s ÷ leak": accepted / seconds / leak,
        IDEAL: ideal / seconds if seconds else 0.0,
        "429s": stats["throttled"],
        "records": records,
        "distinct": distinct,
        "lost": "n/a (stopped)" if stopped else ORDERS - distinct,
        "note": note,
    }


def _engine_fetch(
    endpoint: str, sim: RemoteSimulator, shop: str, slices: int = 4, **shopify
) -> tuple[dict, float, object]:
    user = f"user-{shop}"
    service = service_for(fresh_settings(endpoint), shopify_settings(page_size=PAGE, **shopify),
                          SyncOptions(slices=slices))
    # REST, whose bucket this benchmark is about (new connections read GraphQL, and 10 000 orders in bulk).
    service.add_connection(user, sim.shop_url(shop), f"literal:{sim.tokens[shop]}", api="rest")
    started = time.monotonic()
    result = service.engine.fetch(user, "initial", "orders")
    seconds = time.monotonic() - started
    return {"result": result, "service": service, "user": user}, seconds, result


def _shopifyapi_pages(
    sim: RemoteSimulator, shop: str, limit: int, fields: str | None, seconds: float, retry: bool
) -> dict:
    import shopify
    from pyactiveresource.connection import ClientError

    shopify.ShopifyResource.site = f"{sim.shop_url(shop)}/admin/api/2025-10"
    shopify.ShopifyResource.headers["X-Shopify-Access-Token"] = sim.tokens[shop]
    params = {"limit": limit, "status": "any", **({"fields": fields} if fields else {})}
    ids: list[int] = []
    pages = 0
    retries = 0
    failure = ""
    started = time.monotonic()

    def call(fn):
        nonlocal retries
        while True:
            try:
                return fn()
            except ClientError as error:
                code = getattr(error.response, "code", None)
                if not retry or code != 429:
                    raise
                retries += 1
                wait = float(error.response.headers.get("Retry-After", 0.4) or 0.4)
                time.sleep(wait)

    try:
        page = call(lambda: shopify.Order.find(**params))
        while True:
            ids += [order.id for order in page]
            pages += 1
            if not page.has_next_page() or time.monotonic() - started > seconds:
                break
            page = call(page.next_page)
    except Exception as error:  # noqa: BLE001 - we report how the library fails
        failure = f"{type(error).__name__} after {pages} pages: {str(error)[:80]}"
    finally:
        elapsed = time.monotonic() - started
        shopify.ShopifyResource.clear_session()
    return {
        "ids": ids,
        "pages": pages,
        "seconds": elapsed,
        "failure": failure,
        "retries": retries,
        "complete": pages and not failure and len(set(ids)) == ORDERS,
    }


def run(engine_only: bool = False) -> None:
    header("P1 fetch efficiency")
    names = ["adaptive", "adaptive8", "seedgap", "tunedgap", "lib250", "stress_noretry", "stress_retry"]
    shops = [_shop(n) for n in names[:5]] + [_shop(n, 0.0) for n in names[5:]]
    print(
        f"{ORDERS} orders per shop, page size {PAGE} for the engine ({ORDERS // PAGE} pages), standard plan at "
        f"time_scale {TIME_SCALE} (bucket 40, leak 10/s, Retry-After 0.4 s), latency {LATENCY}s.",
        flush=True,
    )
    rows = []
    with dynamodb() as endpoint, RemoteSimulator(shops, time_scale=TIME_SCALE) as sim:
        leak, size = sim.stats("adaptive")["leak_per_second"], sim.stats("adaptive")["bucket_size"]

        # The seed's scaled fixed gap runs beside everything else (its own shop and bucket).
        seed_out: dict = {}

        def seed_fixed() -> None:
            try:
                seed_out["ctx"], seed_out["seconds"], _ = _engine_fetch(
                    endpoint, sim, "seedgap", pacing="fixed", fixed_gap_seconds=SEED_GAP, retries=0
                )
            except PermanentError as error:
                seed_out["error"] = type(error).__name__

        seed_started = time.monotonic()
        seed_thread = threading.Thread(target=seed_fixed, daemon=True)
        if not engine_only:
            seed_thread.start()

        for label, shop, slices in (("engine adaptive, 4 slices", "adaptive", 4),
                                    ("engine adaptive, 8 slices (SyncOptions(slices=8))", "adaptive8", 8)):
            ctx, seconds, result = _engine_fetch(endpoint, sim, shop, slices=slices)
            distinct = len(_staged_ids(ctx["service"], ctx["user"]))
            pacer = PACERS.for_shop(shop_base_url(sim.shop_url(shop), allow_local=True), 2.0, 2)
            waits = (f"client-side 429 waits {result.throttle_wait_seconds:.1f}s; the pacer waited "
                     f"{pacer.waited_seconds:.1f}s over all slices and learned a leak of {pacer.leak_per_second:.1f}/s")
            rows.append(_row(label, sim.stats(shop), seconds, result.records, distinct, leak, size, waits))
            print(table(rows[-1:], list(rows[-1])), flush=True)
            print(f"{label}: {IDEAL} = {rows[-1][IDEAL]:.3f} (target >= 0.95)", flush=True)
        if engine_only:
            print("\nP1 summary (engine rows only)\n" + table(rows, list(rows[0])), flush=True)
            return

        ctx, seconds, result = _engine_fetch(endpoint, sim, "tunedgap", pacing="fixed", fixed_gap_seconds=1 / leak)
        distinct = len(_staged_ids(ctx["service"], ctx["user"]))
        rows.append(
            _row(
                "engine fixed gap 0.1 s (= 1/leak)",
                sim.stats("tunedgap"),
                seconds,
                result.records,
                distinct,
                leak,
                size,
            )
        )
        print(table(rows[-1:], list(rows[-1])), flush=True)

        lib = _shopifyapi_pages(sim, "lib250", 250, None, SHOPIFYAPI_SECONDS, retry=False)
        rows.append(
            _row(
                "ShopifyAPI 12.7.0, limit 250, whole orders",
                sim.stats("lib250"),
                lib["seconds"],
                len(lib["ids"]),
                len(set(lib["ids"])),
                leak,
                size,
                f"time-boxed at {SHOPIFYAPI_SECONDS:.0f}s ({lib['pages']} of {ORDERS // 250} pages); "
                f"{lib['failure'] or 'no error'}",
                stopped=True,
            )
        )
        print(table(rows[-1:], list(rows[-1])), flush=True)

        for shop, retry in (("stress_noretry", False), ("stress_retry", True)):
            lib = _shopifyapi_pages(sim, shop, PAGE, "id", 120.0, retry=retry)
            note = lib["failure"] or "completed"
            if retry:
                note += f"; {lib['retries']} retries (sleep Retry-After)"
            rows.append(
                _row(
                    f"ShopifyAPI, limit {PAGE}, fields=id, no latency, {'retry on 429' if retry else 'no retry'}",
                    sim.stats(shop),
                    lib["seconds"],
                    len(lib["ids"]),
                    len(set(lib["ids"])),
                    leak,
                    size,
                    note,
                )
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)

        # Stop the seed-gap row: a frozen shop answers 402, a permanent error that ends its fetch.
        seed_window = time.monotonic() - seed_started
        seed_stats = sim.stats("seedgap")
        sim.set_state("seedgap", "frozen")
        seed_thread.join(timeout=SEED_GAP + 10)
        pages = seed_stats["requests"].get("orders", 0)
        rows.insert(
            2,
            _row(
                f"engine fixed gap {SEED_GAP:.0f} s (seed's 120 s ÷ time_scale)",
                seed_stats,
                seed_window,
                pages * PAGE,
                pages * PAGE,
                leak,
                size,
                f"stopped after {seed_window:.0f}s; at this rate {ORDERS // PAGE} pages take "
                f"{(ORDERS // PAGE + 3) * SEED_GAP / 3600:.1f} h",
                stopped=True,
            ),
        )
    print("\nP1 summary\n" + table(rows, list(rows[0])), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="P1 fetch efficiency (see the docstring).")
    parser.add_argument("--engine-only", action="store_true", help="only the engine's adaptive rows")
    run(parser.parse_args(argv).engine_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
