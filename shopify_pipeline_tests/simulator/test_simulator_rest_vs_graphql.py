"""REST and GraphQL serve the same seeded shop: record by record, and products' variants as Shopify cuts them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from shopify_pipeline.simulator import ShopConfig, Simulator

from .conftest import ShopClient

VERSION = "2026-10"
SHOP = "twin"
TOKEN = "shpat_twin"

ORDERS = """query($after: String) { orders(first: 250, after: $after) {
  nodes { legacyResourceId updatedAt email totalPriceSet { shopMoney { amount } } }
  pageInfo { hasNextPage endCursor } } }"""
PRODUCTS = """query($after: String) { products(first: 100, after: $after) {
  nodes { legacyResourceId updatedAt variants(first: 1) { nodes { legacyResourceId price } } }
  pageInfo { hasNextPage endCursor } } }"""
CUSTOMERS = """query($after: String) { customers(first: 250, after: $after) {
  nodes { legacyResourceId updatedAt email } pageInfo { hasNextPage endCursor } } }"""
VARIANTS = """query($id: ID!, $after: String) { node(id: $id) { ... on Product {
  variants(first: 250, after: $after) { nodes { legacyResourceId position }
  pageInfo { hasNextPage endCursor } } } } }"""


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    shop = ShopConfig(SHOP, TOKEN, orders=700, products=30, customers=300, seed=11, plan="unlimited",
                      large_product_every=10, large_product_variants=300, large_order_every=350)
    with Simulator([shop]) as running:
        yield running


@pytest.fixture()
def rest(sim: Simulator) -> ShopClient:
    return ShopClient(sim, SHOP, TOKEN)


def graphql(sim: Simulator, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{sim.shop_url(SHOP)}/admin/api/{VERSION}/graphql.json",
                             json={"query": query, "variables": variables},
                             headers={"X-Shopify-Access-Token": TOKEN}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and "errors" not in body, body
    return body["data"]


def graphql_all(sim: Simulator, query: str, root: str) -> list[dict[str, Any]]:
    """Every node of a root connection, following endCursor to the end."""
    nodes: list[dict[str, Any]] = []
    after = None
    while True:
        page = graphql(sim, query, {"after": after})[root]
        nodes += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        after = page["pageInfo"]["endCursor"]


def rest_all(client: ShopClient, resource: str, **params: Any) -> list[dict[str, Any]]:
    return [record for page in client.all_pages(f"{resource}.json", limit=250, **params)
            for record in page.json()[resource]]


def utc_second(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(timezone.utc).replace(microsecond=0)


def test_orders_are_the_same_record_by_record(sim: Simulator, rest: ShopClient):
    rest_orders = rest_all(rest, "orders", status="any")
    graphql_orders = graphql_all(sim, ORDERS, "orders")
    assert len(rest_orders) == len(graphql_orders) == 700
    for document, node in zip(rest_orders, graphql_orders, strict=True):
        assert node["legacyResourceId"] == str(document["id"])
        assert utc_second(node["updatedAt"]) == utc_second(document["updated_at"])
        assert node["email"] == document["email"]
        assert node["totalPriceSet"]["shopMoney"]["amount"] == document["total_price"]


def test_customers_are_the_same_record_by_record(sim: Simulator, rest: ShopClient):
    rest_customers = rest_all(rest, "customers")
    graphql_customers = graphql_all(sim, CUSTOMERS, "customers")
    assert len(rest_customers) == len(graphql_customers) == 300
    for document, node in zip(rest_customers, graphql_customers, strict=True):
        assert node["legacyResourceId"] == str(document["id"])
        assert utc_second(node["updatedAt"]) == utc_second(document["updated_at"])
        assert node["email"] == document["email"]


def test_products_are_the_same_record_by_record(sim: Simulator, rest: ShopClient):
    rest_products = rest_all(rest, "products")
    graphql_products = graphql_all(sim, PRODUCTS, "products")
    assert len(rest_products) == len(graphql_products) == 30
    for document, node in zip(rest_products, graphql_products, strict=True):
        assert node["legacyResourceId"] == str(document["id"])
        assert utc_second(node["updatedAt"]) == utc_second(document["updated_at"])
        (variant,) = node["variants"]["nodes"]
        assert variant["legacyResourceId"] == str(document["variants"][0]["id"])
        assert variant["price"] == document["variants"][0]["price"]


def test_rest_products_cut_variants_at_100_while_graphql_pages_all_300(sim: Simulator, rest: ShopClient):
    truth = {product["id"]: product for product in sim.records(SHOP, "products")}
    large = [product_id for product_id, product in truth.items() if len(product["variants"]) == 300]
    assert len(large) == 3

    listed = {product["id"]: product for product in rest_all(rest, "products")}
    for product_id, product in listed.items():
        expected = truth[product_id]["variants"][:100]
        assert product["variants"] == expected  # the first 100 by position, silently
    assert {len(listed[product_id]["variants"]) for product_id in large} == {100}
    assert sim.records(SHOP, "products", rest=True) == list(listed.values())

    product_id = large[0]
    shown = rest.get(f"products/{product_id}.json").json()["product"]
    assert [variant["position"] for variant in shown["variants"]] == list(range(1, 101))
    picked = rest.get(f"products/{product_id}.json", fields="id,variants").json()["product"]
    assert len(picked["variants"]) == 100
    only_variants = rest.get("products.json", ids=str(product_id), fields="variants").json()["products"]
    assert len(only_variants[0]["variants"]) == 100
    assert rest.get("products/count.json").json() == {"count": 30}

    seen, after, queries = [], None, 0
    while True:
        variants = graphql(sim, VARIANTS, {"id": f"gid://shopify/Product/{product_id}", "after": after})
        page = variants["node"]["variants"]
        seen += page["nodes"]
        queries += 1
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert queries == 2
    assert [variant["legacyResourceId"] for variant in seen] == [
        str(variant["id"]) for variant in truth[product_id]["variants"]]
    assert [variant["position"] for variant in seen] == list(range(1, 301))


def test_order_line_items_point_at_variants_rest_serves(sim: Simulator, rest: ShopClient):
    variants = {product["id"]: {variant["id"]: variant for variant in product["variants"]}
                for product in rest_all(rest, "products")}
    items = [item for order in rest_all(rest, "orders", status="any", fields="line_items")
             for item in order["line_items"] if item["product_id"] in variants]
    assert len(items) > 500
    for item in items:
        variant = variants[item["product_id"]][item["variant_id"]]
        assert (item["sku"], item["variant_title"]) == (variant["sku"], variant["title"])


def test_rest_and_graphql_still_agree_after_updates_creates_and_deletes():
    shop = ShopConfig(SHOP, TOKEN, orders=300, products=12, customers=60, seed=12, plan="unlimited",
                      large_product_every=6)
    with Simulator([shop]) as moving:
        client = ShopClient(moving, SHOP, TOKEN)
        for data_type in ("orders", "products", "customers"):
            moving.update_records(SHOP, data_type, n=10, seed=1)
            moving.create_records(SHOP, data_type, n=3, seed=2)
            moving.delete_records(SHOP, data_type, n=2, seed=3)
        rest_orders = rest_all(client, "orders", status="any")
        graphql_orders = graphql_all(moving, ORDERS, "orders")
        assert len(rest_orders) == len(graphql_orders) == 301
        for document, node in zip(rest_orders, graphql_orders, strict=True):
            assert node["legacyResourceId"] == str(document["id"])
            assert utc_second(node["updatedAt"]) == utc_second(document["updated_at"])
            assert node["totalPriceSet"]["shopMoney"]["amount"] == document["total_price"]
        for resource, query in (("products", PRODUCTS), ("customers", CUSTOMERS)):
            documents, nodes = rest_all(client, resource), graphql_all(moving, query, resource)
            assert [(str(d["id"]), utc_second(d["updated_at"])) for d in documents] == [
                (n["legacyResourceId"], utc_second(n["updatedAt"])) for n in nodes]
        assert max(len(product["variants"]) for product in rest_all(client, "products")) == 100
