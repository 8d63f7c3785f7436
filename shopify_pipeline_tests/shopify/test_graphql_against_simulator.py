"""Our GraphQL client against the simulator's GraphQL API: nothing truncated, pacing by cost."""

import pytest

from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.client import ShopifyClient
from shopify_pipeline.shopify.cost_pacer import CostPacer
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.simulator import ShopConfig, Simulator

SETTINGS = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=10.0)

ORDERS = """
query Orders($first: Int!, $after: String) {
  orders(first: $first, after: $after, sortKey: UPDATED_AT) {
    nodes { id legacyResourceId updatedAt lineItems(first: 10) { nodes { id } pageInfo { hasNextPage endCursor } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
ORDER_LINE_ITEMS = """
query More($id: ID!, $first: Int!, $after: String) {
  node(id: $id) { ... on Order { lineItems(first: $first, after: $after) {
    nodes { id } pageInfo { hasNextPage endCursor } } } }
}
"""
PRODUCTS = """
query Products($first: Int!, $after: String) {
  products(first: $first, after: $after, sortKey: ID) {
    nodes { id legacyResourceId variants(first: 10) { nodes { id } pageInfo { hasNextPage endCursor } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
PRODUCT_VARIANTS = """
query More($id: ID!, $first: Int!, $after: String) {
  node(id: $id) { ... on Product { variants(first: $first, after: $after) {
    nodes { id } pageInfo { hasNextPage endCursor } } } }
}
"""


@pytest.fixture(scope="module")
def sim():
    shops = [ShopConfig("big", "shpat_big", orders=120, products=12, customers=2, seed=3, plan="plus",
                        large_order_every=60, large_order_line_items=600,
                        large_product_every=6, large_product_variants=300),
             ShopConfig("standard", "shpat_std", orders=1200, products=2, customers=2, seed=4, plan="standard")]
    with Simulator(shops, time_scale=10) as running:
        yield running


def _graphql(sim, shop: str, token: str) -> GraphQLClient:
    return GraphQLClient(ShopifyClient(sim.shop_url(shop), token, SETTINGS), CostPacer())


def test_an_order_with_600_line_items_and_a_product_with_300_variants_arrive_whole(sim):
    graphql = _graphql(sim, "big", "shpat_big")
    orders = [node for nodes, _ in graphql.connection_pages(ORDERS, "orders", first=20) for node in nodes]
    graphql.complete_nested(orders, "lineItems", ORDER_LINE_ITEMS)
    truth = {record["id"]: record for record in sim.records("big", "orders")}
    assert sorted(int(order["legacyResourceId"]) for order in orders) == sorted(truth)
    for order in orders:
        expected = len(truth[int(order["legacyResourceId"])]["line_items"])
        assert len(order["lineItems"]["nodes"]) == expected
        assert not order["lineItems"]["pageInfo"]["hasNextPage"]
    assert max(len(order["lineItems"]["nodes"]) for order in orders) == 600

    products = [node for nodes, _ in graphql.connection_pages(PRODUCTS, "products", first=5) for node in nodes]
    graphql.complete_nested(products, "variants", PRODUCT_VARIANTS)
    truth = {record["id"]: record for record in sim.records("big", "products")}
    assert {int(product["legacyResourceId"]) for product in products} == set(truth)
    sizes = {len(product["variants"]["nodes"]) for product in products}
    assert 300 in sizes
    assert all(len(p["variants"]["nodes"]) == len(truth[int(p["legacyResourceId"])]["variants"]) for p in products)


def test_pacing_by_cost_reads_a_standard_plan_shop_without_being_throttled_after_warm_up(sim):
    graphql = _graphql(sim, "standard", "shpat_std")
    pages = list(graphql.connection_pages(ORDERS, "orders", first=50))
    assert sum(len(nodes) for nodes, _ in pages) == 1200
    # 24 queries of requested cost 652 drain the 2 000-point bucket: the pacer waits instead of Shopify refusing.
    assert graphql.client.stats.pace_wait_seconds > 0
    assert graphql.client.stats.throttled == 0
    assert graphql.pacer.maximum == pytest.approx(2000) and graphql.pacer.restore_per_second > 0


def test_without_a_page_size_the_client_asks_for_as_many_as_fit_under_the_single_query_maximum(sim):
    graphql = _graphql(sim, "big", "shpat_big")
    # An order costs 13 points: itself (1) and lineItems(first: 10) (2 + 10).
    pages = list(graphql.connection_pages(ORDERS, "orders"))
    assert sum(len(nodes) for nodes, _ in pages) == 120
    sizes = [len(nodes) for nodes, _ in pages]
    assert sizes[0] == 10  # the probe
    assert sizes[1] == (1000 - 2) // 13  # 76 orders: 2 + 76 * 13 = 990 points, under the 1 000 maximum
