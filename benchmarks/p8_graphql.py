"""P8 GraphQL paged fetch: cost points used per second ÷ the restore rate, THROTTLED answers, and orders/s
beside REST on identical shops, in one run.

One simulator process serves a shop per client, all on the "standard" plan at time_scale 1 (the honest
GraphQL bucket: 2 000 points restoring 100 points/s; REST: 40 requests leaking 2/s), so that each client has
its own buckets; every LARGE_EVERY-th order has LARGE_LINE_ITEMS line items (nested paging). The engine's
shops (GraphQL and REST twins: same seed, ORDERS orders) are identical.

GraphQL rows, run at the same time (each on its own shop, bucket and pacer; they wait on restore, not CPU):
- headline, the engine's source: `GraphQLSource.page("orders", …)` from shopify/sources.py, page after
  page — the query a sync sends (three money sets, lineItems(first: 10) with a price set, nested pages of
  100) and the staged body it builds, one slice.
- the engine, what users get: `SyncEngine.fetch(user, "initial", "orders")` of a GraphQL connection with
  the default options — plan (scopes, count, oldest order), 4 created_at slices in parallel sharing the
  shop's cost pacer, every page staged in DynamoDB Local with its checkpoint and status.
- the P8 query: `GraphQLClient.connection_pages` + `complete_nested` with the query P8 was first specified
  with (a dozen scalars, totalPriceSet, customer { id }, lineItems(first: 25)); its orders cost about a
  third of the points, so its shop holds P8_ORDERS orders to take about as long.
REST rows, run first, each on its own twin of the engine's shop: `ShopifyClient.pages("orders")` (pages of
250 whole orders, the engine's default, adaptive pacer) and `SyncEngine.fetch` of a REST connection.
Last, a few seconds on the simulator's "unlimited" plan, whose bucket (2 × 10⁷ points) is above the
pacer's sanity limit so that no reading is usable: does the pacer still run without waiting?

Every GraphQL answer is observed on its way back (the ShopifyClient's `request_json`, wrapped on the
instance; for the engine, on the client of the source `SyncEngine.page_source` builds): when it was sent
and answered, requestedQueryCost, actualQueryCost, currentlyAvailable, THROTTLED or not. Points used = the
sum of actualQueryCost (a THROTTLED answer has none). Ratios to the restore rate:
- raw: points used ÷ elapsed ÷ restore rate; counts the full bucket at the start as if it were restore.
- burst-adjusted: (points used − the bucket at the start) ÷ elapsed ÷ restore rate: a perfect client,
  spending the whole bucket and then exactly the restore rate, reaches 1.0. Points left in the bucket at
  the end lower it (a page is charged its requested cost up front, refunded to its actual cost after; the
  last page waits for points it does not spend), by about (points left ÷ restore) ÷ elapsed: a longer run
  lowers that end effect.
- after warm-up: the rate the client sustains once the burst is spent — the least-squares slope of points
  used (cumulative, at each answer) over time, from the end of the first drain on, ÷ restore rate; unlike a
  plain points ÷ seconds of that window it does not count what the bucket held at either end. The first
  drain ends with the first answer whose currentlyAvailable is below the requested cost of the next query
  (from then on the client waits for restore); THROTTLED answers after it are counted apart.
The lines after the ratios show, from the answers, where a run loses time against a perfect client:
points left in the bucket at the end, what the last page and the first nested query waited for.

Lost = orders in the shop (the simulator's own documents) minus distinct ids fetched (for the engine:
staged in DynamoDB Local); every order's line items are counted against the simulator's document too.
Steady ceiling orders/s: GraphQL, the restore rate ÷ the points one order actually cost (nested queries
included); REST, 2 requests/s × 250 orders.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.common import (
    RemoteSimulator,
    dynamodb,
    fresh_settings,
    header,
    service_for,
    shopify_settings,
    table,
)
from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.shopify.client import ShopifyClient
from shopify_pipeline.shopify.cost_pacer import CostPacer, CostReading
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.shopify.sources import GraphQLSource, listing_query

ORDERS = 1_000  # the engine's shops: ~26 points an order, ~4 minutes of restore
P8_ORDERS = 2_700  # the P8 query's shop: ~9.5 points an order, about as long
UNLIMITED_ORDERS = 200
LARGE_EVERY = 350  # 2 (7 in the P8 query's shop) orders of 300 line items, completed by nested queries
LARGE_LINE_ITEMS = 300
TIME_SCALE = 1
WINDOW_SECONDS = 60.0
REST_LEAK, REST_PAGE = 2.0, 250

ORDERS_QUERY = """
query Orders($first: Int!, $after: String) {
  orders(first: $first, after: $after, sortKey: UPDATED_AT) {
    nodes {
      id legacyResourceId name email createdAt updatedAt processedAt cancelledAt
      displayFinancialStatus displayFulfillmentStatus currencyCode tags
      totalPriceSet { shopMoney { amount currencyCode } }
      customer { id }
      lineItems(first: 25) { nodes { id name quantity sku variantTitle } pageInfo { hasNextPage endCursor } }
    }
    pageInfo { hasNextPage endCursor }
  }
}
"""
LINE_ITEMS_QUERY = """
query OrderLineItems($id: ID!, $first: Int!, $after: String) {
  node(id: $id) { ... on Order { lineItems(first: $first, after: $after) {
    nodes { id name quantity sku variantTitle } pageInfo { hasNextPage endCursor } } } }
}
"""


def _shop(name: str, orders: int, plan: str = "standard") -> dict:
    return {
        "name": name,
        "token": f"shpat_{name}",
        "orders": orders,
        "seed": 8,
        "plan": plan,
        "large_order_every": LARGE_EVERY,
        "large_order_line_items": LARGE_LINE_ITEMS,
    }


@dataclass
class Answered:
    """One GraphQL answer as it came back."""

    query: str  # "orders" (a page), "lineItems" (the rest of one order's line items) or "other" (planning)
    first: int | None
    sent: float
    answered: float
    requested: float
    actual: float
    available: float
    throttled: bool
    readable: bool  # the pacer could use its cost reading


@dataclass
class Fetched:
    """What one client fetched: order id → line items, how long it took, and its GraphQL answers."""

    label: str
    shop: str
    seconds: float
    records: int
    line_items: dict[int, int]
    log: list[Answered]
    nested: int = 0
    note: str = ""


def _observe(client: ShopifyClient, listing: str, log: list[Answered] | None = None) -> list[Answered]:
    """Record every answer `client` gets (an instance attribute: GraphQLClient calls client.request_json)."""
    log = [] if log is None else log
    request_json = client.request_json

    def observed(method: str, url: str, json_body: dict | None = None, paced: bool = True):
        sent = time.monotonic()
        document, answer = request_json(method, url, json_body, paced=paced)
        cost = (document.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus") or {}
        codes = [(e.get("extensions") or {}).get("code") for e in document.get("errors") or [] if isinstance(e, dict)]
        query, variables = json_body["query"], json_body.get("variables") or {}
        kind = "orders" if query == listing else "lineItems" if "node(id:" in query else "other"
        log.append(Answered(kind, variables.get("first"), sent, time.monotonic(),
                            float(cost.get("requestedQueryCost") or 0), float(cost.get("actualQueryCost") or 0),
                            float(status.get("currentlyAvailable", -1)), "THROTTLED" in codes,
                            CostReading.of(document.get("extensions")) is not None))
        return document, answer

    client.request_json = observed
    return log


def _client(sim: RemoteSimulator, shop: str) -> ShopifyClient:
    return ShopifyClient(sim.shop_url(shop), sim.tokens[shop], shopify_settings())


def _truth(sim: RemoteSimulator, shop: str) -> dict[int, int]:
    """The simulator's own documents: order id → number of line items."""
    url = f"{sim.base_url}/_simulator/shops/{shop}/records/orders"
    with urllib.request.urlopen(url, timeout=120) as answer:
        return {order["id"]: len(order["line_items"]) for order in json.loads(answer.read())["orders"]}


def _rest(sim: RemoteSimulator, shop: str) -> Fetched:
    client = _client(sim, shop)
    line_items: dict[int, int] = {}
    records = 0
    started = time.monotonic()
    for page in client.pages("orders"):
        records += len(page.records)
        line_items.update((order["id"], len(order["line_items"])) for order in page.records)
    seconds = time.monotonic() - started
    client.close()
    return Fetched(f'REST ShopifyClient.pages("orders"), limit {REST_PAGE}', shop, seconds, records, line_items, [])


def _connection_pages(sim: RemoteSimulator, shop: str) -> Fetched:
    client = _client(sim, shop)
    log = _observe(client, ORDERS_QUERY)
    graphql = GraphQLClient(client, CostPacer())
    line_items: dict[int, int] = {}
    records = nested = 0
    started = time.monotonic()
    for nodes, _ in graphql.connection_pages(ORDERS_QUERY, "orders"):
        nested += graphql.complete_nested(nodes, "lineItems", LINE_ITEMS_QUERY)
        records += len(nodes)
        line_items.update((int(order["legacyResourceId"]), len(order["lineItems"]["nodes"])) for order in nodes)
    seconds = time.monotonic() - started
    client.close()
    return Fetched("GraphQL P8 query, connection_pages, lineItems(first: 25)", shop, seconds, records, line_items,
                   log, nested)


def _engine_source(sim: RemoteSimulator, shop: str) -> Fetched:
    client = _client(sim, shop)
    log = _observe(client, listing_query("orders"))
    source = GraphQLSource(client)
    line_items: dict[int, int] = {}
    records = 0
    position = None
    started = time.monotonic()
    while True:
        page = source.page("orders", {}, position)
        records += len(page.records)
        line_items.update((int(order["legacyResourceId"]), len(order["lineItems"]["nodes"])) for order in page.records)
        position = page.next
        if position is None:
            break
    seconds = time.monotonic() - started
    source.close()
    return Fetched("GraphQL engine's query, GraphQLSource.page", shop, seconds, records, line_items, log,
                   source.nested_queries, f"{client.stats.pace_wait_seconds:.0f} s paced")


def _engine_fetch(endpoint: str, sim: RemoteSimulator, shop: str, api: str) -> Fetched:
    """`SyncEngine.fetch` of an initial orders sync of a connection on `api`, default options; what it staged."""
    user = f"user-{shop}"
    service = service_for(fresh_settings(endpoint), shopify_settings())
    service.add_connection(user, sim.shop_url(shop), f"literal:{sim.tokens[shop]}", api=api)
    engine = service.engine
    log: list[Answered] = []
    sources: list = []
    build = engine.page_source

    def observed_source(connection, sync_type=None):
        source = build(connection, sync_type)
        sources.append(source)
        if api == "graphql":
            _observe(source.client, listing_query("orders"), log)
        return source

    engine.page_source = observed_source
    started = time.monotonic()
    result = engine.fetch(user, "initial", "orders")
    seconds = time.monotonic() - started
    key = engine.staging_key(user, "initial", "orders")
    line_items: dict[int, int] = {}
    records = 0
    for page in engine.pages.list(key):
        for order in parse_json(engine.pages.body(key, page))["orders"]:
            records += 1
            if api == "graphql":
                line_items[int(order["legacyResourceId"])] = len(order["lineItems"]["nodes"])
            else:
                line_items[int(order["id"])] = len(order["line_items"])
    slices = len(engine.state.load_checkpoint(user, "initial", "orders").state["slices"])
    nested = sum(getattr(s, "nested_queries", 0) for s in sources)
    label = f"{'GraphQL' if api == 'graphql' else 'REST'} engine, SyncEngine.fetch + DynamoDB Local"
    note = (f"{slices} slices, {result.pages} pages staged, client THROTTLED {result.throttled}, "
            f"{sources[0].stats.pace_wait_seconds:.0f} s paced (all threads)")
    return Fetched(label, shop, seconds, records, line_items, log, nested, note)


def _unlimited(sim: RemoteSimulator, shop: str) -> dict:
    """The engine's source on the simulator's "unlimited" plan, whose readings the pacer cannot use."""
    client = _client(sim, shop)
    log = _observe(client, listing_query("orders"))
    source = GraphQLSource(client)
    records, position = 0, None
    started = time.monotonic()
    while True:
        page = source.page("orders", {}, position)
        records += len(page.records)
        position = page.next
        if position is None:
            break
    seconds = time.monotonic() - started
    source.close()
    gaps = [b.sent - a.answered for a, b in zip(log, log[1:], strict=False)]
    return {
        "plan": "unlimited (bucket 2 × 10⁷)",
        "orders": records,
        "queries": len(log),
        "usable readings": sum(a.readable for a in log),
        "seconds": seconds,
        "paced s": client.stats.pace_wait_seconds,
        "longest gap between queries s": max(gaps, default=0.0),
        "page sizes": str(sorted({a.first for a in log if a.query == "orders"})),
    }


def _in_thread(fetch: Callable[[], Fetched]) -> Callable[[], Fetched]:
    """Start `fetch` in a thread; the returned function waits for its result (or its exception)."""
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fetch()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result() -> Fetched:
        thread.join()
        if "error" in out:
            raise out["error"]
        return out["result"]

    return result


def _warm_up_end(log: list[Answered]) -> int:
    """Index of the answer that ended the first drain: it left less than the next query asks for."""
    for i in range(len(log) - 1):
        if not log[i].throttled and 0 <= log[i].available < log[i + 1].requested:
            return i
    return len(log) - 1


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else 0.0


def _ratios(run: Fetched, bucket: float, restore: float) -> dict:
    log = run.log
    start, end = log[0].sent, log[-1].answered
    elapsed = end - start
    used = sum(a.actual for a in log)
    warm = _warm_up_end(log)
    after = [a for a in log if a.sent >= log[warm].answered]
    cumulative, total = [], 0.0
    for a in log:
        total += a.actual
        cumulative.append((a.answered, total))
    return {
        "client": run.label,
        "queries": len(log),
        "points used": int(used),
        "seconds": elapsed,
        "raw": used / elapsed / restore,
        f"burst-adjusted (− {bucket:.0f})": (used - bucket) / elapsed / restore,
        "after warm-up (slope)": _slope(cumulative[warm:]) / restore,
        "warm-up ends": f"answer {warm + 1}, t={log[warm].answered - start:.1f} s",
        "THROTTLED (after warm-up)": f"{sum(a.throttled for a in log)} ({sum(a.throttled for a in after)})",
        "bucket left at the end": int(log[-1].available),
        "orders/s": run.records / run.seconds,
    }


def _evidence(run: Fetched, bucket: float, restore: float) -> list[str]:
    """Where the burst-adjusted ratio loses time against a perfect client, from the answers themselves."""
    log = run.log
    used = sum(a.actual for a in log)
    elapsed = log[-1].answered - log[0].sent
    ideal = (used - bucket) / restore
    pages = [a for a in log if a.query == "orders" and not a.throttled]
    lines = [f"a perfect client spends the {bucket:.0f}-point bucket, then exactly {restore:.0f} points/s: "
             f"{ideal:.1f} s for these {used:.0f} points; this run took {elapsed:.1f} s ({elapsed - ideal:.1f} s "
             f"more) and left {log[-1].available:.0f} points in the bucket = {log[-1].available / restore:.1f} s "
             f"of restore never spent",
             f"pages asked first={sorted({a.first for a in pages})}, requested cost "
             f"{sorted({int(a.requested) for a in pages})}, actual mean {sum(a.actual for a in pages) / len(pages):.0f}"
             f" ({sum(a.actual for a in pages) / sum(a.requested for a in pages):.0%} of requested); lowest "
             f"currentlyAvailable after the first drain "
             f"{min(a.available for a in log[_warm_up_end(log):] if a.available >= 0):.0f}; "
             f"{run.nested} nested queries; {used / run.records:.2f} points an order"]
    last = max(i for i, a in enumerate(log) if a.query == "orders")
    before = log[last - 1]
    held = before.available + (log[last].sent - before.answered) * restore
    lines.append(f"last page: requested {log[last].requested:.0f}, actual {log[last].actual:.0f}; sent when the "
                 f"bucket held ~{held:.0f}, {log[last].sent - before.answered:.1f} s after the answer before it")
    if last != len(log) - 1:
        tail = log[last + 1:]
        lines.append(f"after the last page: {len(tail)} answers ({', '.join(a.query for a in tail[:6])}), "
                     f"{tail[-1].answered - log[last].answered:.1f} s")
    nested = next((i for i, a in enumerate(log) if a.query == "lineItems" and i), None)
    if nested is not None:
        before = log[nested - 1]
        needed = max(0.0, (log[nested].requested - before.available) / restore)
        lines.append(f"first nested query (first={log[nested].first}): requested {log[nested].requested:.0f}, the "
                     f"answer before it left {before.available:.0f}: {needed:.1f} s of restore needed, sent "
                     f"{log[nested].sent - before.answered:.1f} s later")
    return lines


def _timeline(run: Fetched, restore: float) -> list[dict]:
    log = run.log
    start, end = log[0].sent, log[-1].answered
    rows = []
    edge = start
    while edge < end:
        window = [a for a in log if edge <= a.sent < edge + WINDOW_SECONDS]
        span = min(WINDOW_SECONDS, end - edge)
        used = sum(a.actual for a in window)
        rows.append({
            "client": run.label,
            "seconds": f"{edge - start:.0f}–{edge - start + span:.0f}",
            "queries": len(window),
            "THROTTLED": sum(a.throttled for a in window),
            "points used": int(used),
            "points/s ÷ restore": used / span / restore,
            "lowest currentlyAvailable": int(min((a.available for a in window if a.available >= 0), default=-1)),
        })
        edge += WINDOW_SECONDS
    return rows


def _summary(run: Fetched, truth: dict[int, int], stats: dict, ceiling: float, note: str) -> dict:
    graphql = bool(run.log)
    return {
        "client": run.label,
        "orders in shop": len(truth),
        "seconds": run.seconds,
        "requests": stats["requests"].get("graphql", 0) if graphql else stats["total_requests"],
        "THROTTLED / 429s": f"{stats['graphql_throttled']} / {stats['throttled']}",
        "records": run.records,
        "distinct": len(run.line_items),
        "lost": len(truth.keys() - run.line_items.keys()),
        "line items differing": sum(1 for i, n in run.line_items.items() if truth.get(i) != n),
        "orders/s": run.records / run.seconds,
        "steady ceiling orders/s": ceiling,
        "note": note,
    }


def run() -> None:
    header("P8 GraphQL paged fetch")
    print(f"Standard plan at time_scale {TIME_SCALE}: GraphQL bucket 2000 points restoring 100/s, REST 40 requests "
          f"leaking 2/s. Shops of {ORDERS} orders (the engine's query, the engine on GraphQL and REST, REST "
          f"client) and {P8_ORDERS} (P8 query); every {LARGE_EVERY}th order has {LARGE_LINE_ITEMS} line items.",
          flush=True)
    shops = [_shop("source", ORDERS), _shop("sync", ORDERS), _shop("gql", P8_ORDERS), _shop("rest", ORDERS),
             _shop("restsync", ORDERS), _shop("unlimited", UNLIMITED_ORDERS, "unlimited")]
    with dynamodb() as endpoint, RemoteSimulator(shops, time_scale=TIME_SCALE) as sim:
        initial = sim.stats("source")["graphql_throttle_status"]
        restore, bucket = initial["restoreRate"], initial["currentlyAvailable"]
        rests = [_rest(sim, "rest"), _engine_fetch(endpoint, sim, "restsync", "rest")]
        waits = [_in_thread(lambda: _engine_source(sim, "source")),
                 _in_thread(lambda: _engine_fetch(endpoint, sim, "sync", "graphql")),
                 _in_thread(lambda: _connection_pages(sim, "gql"))]
        runs = [wait() for wait in waits]
        unlimited = _unlimited(sim, "unlimited")
        stats = {shop["name"]: sim.stats(shop["name"]) for shop in shops}
        truth = {shop["name"]: _truth(sim, shop["name"]) for shop in shops}

    print("\nGraphQL answers by 60 s window of send time\n" +
          table([row for r in runs for row in _timeline(r, restore)], list(_timeline(runs[0], restore)[0])))
    ratios = [_ratios(r, bucket, restore) for r in runs]
    print(f"\nGraphQL cost points used ÷ restore rate ({restore:.0f}/s)\n" + table(ratios, list(ratios[0])))
    for r in runs:
        print(f"{r.label}:\n" + "\n".join("- " + line for line in _evidence(r, bucket, restore)), flush=True)

    rows = [
        _summary(r, truth[r.shop], stats[r.shop], restore * r.records / sum(a.actual for a in r.log),
                 "; ".join(n for n in (f"{r.nested} nested queries", r.note) if n))
        for r in runs
    ]
    rows += [_summary(r, truth[r.shop], stats[r.shop], REST_LEAK * REST_PAGE,
                      r.note or f"{-(-ORDERS // REST_PAGE)} pages: inside the 40-request burst")
             for r in rests]
    print("\nP8 summary\n" + table(rows, list(rows[0])), flush=True)
    print("\nThe pacer without a usable reading (simulator's unlimited plan)\n" + table([unlimited], list(unlimited)),
          flush=True)
