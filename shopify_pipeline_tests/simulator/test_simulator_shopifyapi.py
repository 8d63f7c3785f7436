"""Shopify's own Python library (ShopifyAPI, from PyPI) pages through the simulator unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shopify_pipeline.simulator import ShopConfig, Simulator

shopify = pytest.importorskip("shopify")


@pytest.fixture()
def library_shop() -> Iterator[Simulator]:
    shop = ShopConfig("lib", "shpat_lib", orders=1000, products=20, seed=4, plan="plus", large_product_every=10,
                      large_product_variants=300)
    with Simulator([shop]) as simulator:
        # shopify.Session insists on https://{shop}.myshopify.com, so point the resource layer at the
        # simulator directly: ShopifyResource.site takes any base URL, headers carry the token.
        shopify.ShopifyResource.site = f"{simulator.shop_url('lib')}/admin/api/2026-10"
        shopify.ShopifyResource.headers["X-Shopify-Access-Token"] = "shpat_lib"
        try:
            yield simulator
        finally:
            shopify.ShopifyResource.clear_session()


def test_shopifyapi_pages_through_1000_orders(library_shop: Simulator):
    # fields= keeps the library's object building (about 30 ms per full order) out of the test time;
    # the paging itself (page_info, Link) is the same as for whole documents.
    page = shopify.Order.find(limit=250, status="any", fields="id,updated_at")
    seen = [order.id for order in page]
    pages = 1
    while page.has_next_page():
        page = page.next_page()
        seen += [order.id for order in page]
        pages += 1
    truth = [order["id"] for order in library_shop.records("lib", "orders")]
    assert pages == 4
    assert len(seen) == 1000 and seen == truth


def test_shopifyapi_reads_a_whole_order(library_shop: Simulator):
    truth = library_shop.records("lib", "orders")[10]
    order = shopify.Order.find(truth["id"])
    assert order.id == truth["id"] and order.total_price == truth["total_price"]
    assert order.line_items[0].tax_lines[0].rate == truth["line_items"][0]["tax_lines"][0]["rate"]
    assert shopify.Order.count(status="any") == 1000


ORDER_PAGE = """query Orders($after: String) {
  orders(first: 250, after: $after) { nodes { id legacyResourceId } pageInfo { hasNextPage endCursor } }
}"""
PRODUCT_PAGE = """query Products($after: String) {
  products(first: 5, after: $after) {
    nodes { id legacyResourceId variants(first: 100) { nodes { legacyResourceId } pageInfo { hasNextPage endCursor } } }
    pageInfo { hasNextPage endCursor }
  }
}"""
MORE_VARIANTS = """query Variants($id: ID!, $after: String) {
  node(id: $id) { ... on Product { variants(first: 100, after: $after) {
    nodes { legacyResourceId } pageInfo { hasNextPage endCursor } } } }
}"""


def execute(query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """One query through the library's own GraphQL client; the data, after checking there are no errors."""
    body = json.loads(shopify.GraphQL().execute(query, variables))
    assert "errors" not in body, body
    return body["data"]


def test_shopifyapi_graphql_pages_through_1000_orders(library_shop: Simulator):
    seen, after, pages = [], None, 0
    while True:
        connection = execute(ORDER_PAGE, {"after": after})["orders"]
        seen += connection["nodes"]
        pages += 1
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    rest_ids = [order["id"] for order in library_shop.records("lib", "orders")]
    assert pages == 4 and len(seen) == 1000
    assert [int(node["legacyResourceId"]) for node in seen] == rest_ids
    assert [node["id"] for node in seen] == [f"gid://shopify/Order/{id_}" for id_ in rest_ids]
    assert library_shop.stats("lib")["requests"]["graphql"] == 4


def test_shopifyapi_graphql_pages_nested_variants_of_300_variant_products(library_shop: Simulator):
    products, after = [], None
    while True:
        connection = execute(PRODUCT_PAGE, {"after": after})["products"]
        products += connection["nodes"]
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    variants = {}
    for product in products:
        page = product["variants"]
        found = list(page["nodes"])
        while page["pageInfo"]["hasNextPage"]:
            page = execute(MORE_VARIANTS, {"id": product["id"], "after": page["pageInfo"]["endCursor"]})
            page = page["node"]["variants"]
            found += page["nodes"]
        variants[int(product["legacyResourceId"])] = [int(variant["legacyResourceId"]) for variant in found]
    truth = {product["id"]: [variant["id"] for variant in product["variants"]]
             for product in library_shop.records("lib", "products")}
    assert variants == truth
    assert sorted(len(ids) for ids in variants.values())[-2:] == [300, 300]
    assert all(len(set(ids)) == len(ids) for ids in variants.values())
