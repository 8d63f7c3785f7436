"""The simulator's GraphQL Admin API: paging, search, nested connections, cost, throttling, errors, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator

VERSION = "2026-10"
TIME_SCALE = 5

ORDER_PAGE = """
query Orders($after: String, $query: String) {
  orders(first: 50, after: $after, query: $query, sortKey: UPDATED_AT) {
    edges { cursor node { id legacyResourceId name updatedAt createdAt totalPriceSet { shopMoney { amount } } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    shops = [
        ShopConfig("gql", "shpat_gql", orders=600, products=40, customers=30, seed=5, plan="plus",
                   large_product_every=20, large_order_every=300, large_order_line_items=600),
        ShopConfig("std", "shpat_std", orders=300, products=3, customers=3, seed=6),
        ShopConfig("scoped", "shpat_scoped", orders=10, products=5, customers=5, seed=7, plan="plus",
                   scopes=("read_products",)),
        ShopConfig("ev", "shpat_ev", orders=20, products=2, customers=2, seed=8, plan="plus"),
    ]
    with Simulator(shops, time_scale=TIME_SCALE) as running:
        yield running


def post(sim: Simulator, shop: str, query: str, variables: dict[str, Any] | None = None,
         token: str | None = None) -> requests.Response:
    url = f"{sim.shop_url(shop)}/admin/api/{VERSION}/graphql.json"
    headers = {"X-Shopify-Access-Token": token or f"shpat_{shop}"}
    return requests.post(url, json={"query": query, "variables": variables}, headers=headers, timeout=10)


def utc(rest_timestamp: str) -> str:
    return datetime.fromisoformat(rest_timestamp).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def all_orders(sim: Simulator, shop: str, query: str | None = None) -> list[dict[str, Any]]:
    nodes, after = [], None
    while True:
        answer = post(sim, shop, ORDER_PAGE, {"after": after, "query": query}).json()
        page = answer["data"]["orders"]
        nodes += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        after = page["pageInfo"]["endCursor"]


def test_paging_every_order_matches_the_rest_records(sim: Simulator):
    nodes = all_orders(sim, "gql")
    truth = sorted(sim.records("gql", "orders"), key=lambda order: (utc(order["updated_at"]), order["id"]))
    assert [node["id"] for node in nodes] == [f"gid://shopify/Order/{order['id']}" for order in truth]
    for node, order in zip(nodes, truth, strict=True):
        assert node["legacyResourceId"] == str(order["id"])
        assert node["updatedAt"] == utc(order["updated_at"]) and node["createdAt"] == utc(order["created_at"])
        assert node["name"] == order["name"]
        assert node["totalPriceSet"]["shopMoney"]["amount"] == order["total_price"]


def test_search_query_filters_on_timestamps(sim: Simulator):
    truth = sim.records("gql", "orders")
    stamps = sorted(utc(order["updated_at"]) for order in truth)
    low, high = stamps[100], stamps[300]
    nodes = all_orders(sim, "gql", f"updated_at:>='{low}' AND updated_at:<'{high}'")
    expected = {order["id"] for order in truth if low <= utc(order["updated_at"]) < high}
    assert {int(node["legacyResourceId"]) for node in nodes} == expected and len(expected) >= 150

    created = sorted(utc(order["created_at"]) for order in truth)[50]
    nodes = all_orders(sim, "gql", f'created_at:<="{created}"')
    assert {int(node["legacyResourceId"]) for node in nodes} == {
        order["id"] for order in truth if utc(order["created_at"]) <= created}
    count = post(sim, "gql", f"{{ ordersCount(query: \"created_at:<='{created}'\") {{ count precision }} }}")
    assert count.json()["data"]["ordersCount"] == {"count": len(nodes), "precision": "EXACT"}


VARIANTS = """
query Variants($id: ID!, $after: String) {
  node(id: $id) {
    ... on Product { variants(first: 100, after: $after) { nodes { id sku price } pageInfo { hasNextPage endCursor } } }
  }
}
"""


def test_nested_variants_of_a_300_variant_product_page(sim: Simulator):
    product = next(product for product in sim.records("gql", "products") if len(product["variants"]) == 300)
    seen, after, queries = [], None, 0
    while True:
        answer = post(sim, "gql", VARIANTS, {"id": f"gid://shopify/Product/{product['id']}", "after": after})
        variants = answer.json()["data"]["node"]["variants"]
        queries += 1
        seen += variants["nodes"]
        if not variants["pageInfo"]["hasNextPage"]:
            break
        after = variants["pageInfo"]["endCursor"]
    assert queries == 3
    assert [variant["id"] for variant in seen] == [f"gid://shopify/ProductVariant/{v['id']}"
                                                   for v in product["variants"]]
    assert [variant["price"] for variant in seen] == [v["price"] for v in product["variants"]]
    assert len({variant["id"] for variant in seen}) == 300


def test_nested_line_items_of_a_600_item_order_need_three_queries(sim: Simulator):
    order = next(order for order in sim.records("gql", "orders") if len(order["line_items"]) == 600)
    query = """query($id: ID!, $after: String) { node(id: $id) { ... on Order {
        lineItems(first: 250, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } } } }"""
    seen, after = [], None
    for _ in range(3):
        items = post(sim, "gql", query, {"id": f"gid://shopify/Order/{order['id']}", "after": after})
        items = items.json()["data"]["node"]["lineItems"]
        seen += [item["id"] for item in items["nodes"]]
        after = items["pageInfo"]["endCursor"]
    assert not items["pageInfo"]["hasNextPage"]
    assert seen == [f"gid://shopify/LineItem/{item['id']}" for item in order["line_items"]]


def test_cost_of_a_known_query(sim: Simulator):
    answer = post(sim, "gql", "{ orders(first: 50) { nodes { id lineItems(first: 10) { nodes { id } } } } }").json()
    first_50 = sim.records("gql", "orders")[:50]  # default sort: ID
    cost = answer["extensions"]["cost"]
    # Requested: the connection 2 + 50, and for each of the 50 orders lineItems 2 + 10.
    assert cost["requestedQueryCost"] == 2 + 50 + 50 * (2 + 10) == 652
    # Actual: what came back, each order's lineItems 2 + the items it returned.
    assert cost["actualQueryCost"] == 2 + 50 + sum(2 + min(len(order["line_items"]), 10) for order in first_50)
    assert [len(node["lineItems"]["nodes"]) for node in answer["data"]["orders"]["nodes"]] == [
        min(len(order["line_items"]), 10) for order in first_50]
    status = cost["throttleStatus"]
    assert status["maximumAvailable"] == 20_000.0 and status["restoreRate"] == 1000.0 * TIME_SCALE
    assert status["currentlyAvailable"] <= 20_000

    objects = post(sim, "gql", "{ shop { name } products(first: 3) { edges { node { title "
                               "variants(first: 2) { nodes { price } } } } pageInfo { hasNextPage } } }").json()
    assert objects["extensions"]["cost"]["requestedQueryCost"] == 1 + 2 + 3 + 3 * (2 + 2)


def test_max_cost_exceeded_runs_nothing(sim: Simulator):
    response = post(sim, "std", "{ orders(first: 250) { nodes { lineItems(first: 250) { nodes { id } } } } }")
    assert response.status_code == 200
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
    assert body["extensions"]["cost"]["requestedQueryCost"] == 2 + 250 + 250 * 252
    assert body["extensions"]["cost"]["actualQueryCost"] is None


def test_throttled_when_drained_and_recovers_after_the_restore_time(sim: Simulator):
    # 2 + 249 + 249 × 3 objects = 998 points, all of them actual: two such queries drain the 2000-point bucket.
    query = ("{ orders(first: 249) { nodes { id totalPriceSet { shopMoney { amount } "
             "presentmentMoney { amount } } } } }")
    throttled_before = sim.stats("std")["graphql_throttled"]
    answers = [post(sim, "std", query).json() for _ in range(3)]
    assert [answer["extensions"]["cost"]["actualQueryCost"] for answer in answers[:2]] == [998, 998]
    throttled = answers[2]
    assert throttled["errors"] == [{"message": "Throttled", "extensions": {
        "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}]
    assert "data" not in throttled
    cost = throttled["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 998 and cost["actualQueryCost"] is None
    status = cost["throttleStatus"]
    assert status["maximumAvailable"] == 2000.0 and status["restoreRate"] == 100.0 * TIME_SCALE
    assert status["currentlyAvailable"] < 998
    assert sim.stats("std")["graphql_throttled"] == throttled_before + 1

    time.sleep((998 - status["currentlyAvailable"]) / status["restoreRate"] + 0.1)
    recovered = post(sim, "std", query).json()
    assert "errors" not in recovered and len(recovered["data"]["orders"]["nodes"]) == 249


def test_bad_token_and_shop_states(sim: Simulator):
    query = "{ shop { name } }"
    assert post(sim, "std", query, token="shpat_wrong").status_code == 401
    sim.set_state("std", "frozen")
    try:
        assert post(sim, "std", query).status_code == 402
    finally:
        sim.set_state("std", "active")
    response = post(sim, "std", query)
    assert response.status_code == 200 and response.headers["X-Shopify-API-Version"] == VERSION
    assert response.json()["data"] == {"shop": {"name": "std"}}
    assert sim.stats("std")["requests"]["graphql"] >= 3


def test_syntax_and_validation_errors_have_no_data(sim: Simulator):
    for query in ("{ orders(first: 5) { nodes { id }", "{ orders(first: 5) { nodes { nope } } }"):
        response = post(sim, "std", query)
        assert response.status_code == 200
        body = response.json()
        assert "data" not in body and body["errors"][0]["message"]
        assert body["extensions"]["cost"]["requestedQueryCost"] == 0


def test_missing_scope_is_access_denied_with_partial_data(sim: Simulator):
    body = post(sim, "scoped", "{ products(first: 2) { nodes { id } } orders(first: 2) { nodes { id } } }").json()
    assert len(body["data"]["products"]["nodes"]) == 2 and body["data"]["orders"] is None
    (error,) = body["errors"]
    assert error["path"] == ["orders"] and error["extensions"]["code"] == "ACCESS_DENIED"
    assert error["extensions"]["requiredAccess"] == "`read_orders` access scope."


def test_fault_rules_match_graphql_and_its_root_fields(sim: Simulator):
    sim.set_faults("ev", FaultConfig(rules=(
        FaultRule("503", endpoint="graphql:orders"),
        FaultRule("throttled", endpoint="graphql:products"),
        FaultRule("partial", endpoint="graphql:customers"),
    )))
    try:
        assert post(sim, "ev", "{ shop { name } }").status_code == 200
        unavailable = post(sim, "ev", "{ orders(first: 1) { nodes { id } } }")
        assert unavailable.status_code == 503 and unavailable.text.startswith("<!DOCTYPE html>")
        assert post(sim, "ev", "{ orders(first: 1) { nodes { id } } }").json()["data"]["orders"]["nodes"]
        forced = post(sim, "ev", "{ products(first: 1) { nodes { id } } }").json()
        assert forced["errors"][0]["extensions"]["code"] == "THROTTLED"
        partial = post(sim, "ev", "{ shop { name } customers(first: 1) { nodes { id } } }").json()
        assert partial["data"] == {"shop": {"name": "ev"}, "customers": None}
        assert partial["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        assert sim.stats("ev")["faults_served"] == {"503": 1, "throttled": 1, "partial": 1}
    finally:
        sim.set_faults("ev", FaultConfig())


def test_events_list_deleted_orders(sim: Simulator):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    deleted = sim.delete_records("ev", "orders", n=3, seed=2)
    sim.delete_records("ev", "products", n=1, seed=2)
    query = f"""{{ events(first: 10, query: "action:destroy AND subject_type:ORDER AND created_at:>='{since}'") {{
        nodes {{ id action createdAt ... on BasicEvent {{ subjectType subjectId }} }} }} }}"""
    nodes = post(sim, "ev", query).json()["data"]["events"]["nodes"]
    assert [node["subjectId"] for node in nodes] == [f"gid://shopify/Order/{id_}" for id_ in deleted]
    assert {node["action"] for node in nodes} == {"destroy"} and {node["subjectType"] for node in nodes} == {"ORDER"}


def test_shopifyapi_graphql_runs_against_the_simulator(sim: Simulator):
    shopify = pytest.importorskip("shopify")
    shopify.ShopifyResource.site = f"{sim.shop_url('gql')}/admin/api/{VERSION}"
    shopify.ShopifyResource.headers["X-Shopify-Access-Token"] = "shpat_gql"
    try:
        raw = shopify.GraphQL().execute("query($n: Int!) { orders(first: $n) { nodes { legacyResourceId } } }",
                                        variables={"n": 5})
    finally:
        shopify.ShopifyResource.clear_session()
    body = json.loads(raw)
    assert [node["legacyResourceId"] for node in body["data"]["orders"]["nodes"]] == [
        str(order["id"]) for order in sim.records("gql", "orders")[:5]]
    assert body["extensions"]["cost"]["requestedQueryCost"] == 2 + 5


def test_retired_versions_fall_forward_on_graphql(sim: Simulator):
    query = "{ orders(first: 2) { nodes { legacyResourceId } } }"
    for asked, answered in (("2024-07", "2026-01"), ("2025-10", "2026-01"), ("2026-04", "2026-04")):
        response = requests.post(f"{sim.shop_url('gql')}/admin/api/{asked}/graphql.json", json={"query": query},
                                 headers={"X-Shopify-Access-Token": "shpat_gql"}, timeout=10)
        assert response.status_code == 200 and response.headers["X-Shopify-API-Version"] == answered
        assert len(response.json()["data"]["orders"]["nodes"]) == 2
    future = requests.post(f"{sim.shop_url('gql')}/admin/api/2027-01/graphql.json", json={"query": query},
                           headers={"X-Shopify-Access-Token": "shpat_gql"}, timeout=10)
    assert future.status_code == 404
