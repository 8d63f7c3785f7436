"""The generated data: Shopify's shapes, determinism, sizes, and mutations while serving."""

from __future__ import annotations

import json
import re
from datetime import datetime

from shopify_pipeline.simulator import ShopConfig, Simulator

from .conftest import ShopClient

LOCAL_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
MONEY = re.compile(r"^-?\d+\.\d\d$")


def test_orders_look_like_shopifys(simulator: Simulator):
    orders = simulator.records("acme", "orders")
    order = orders[0]
    assert len(order) >= 85
    assert order["id"] > 2**53
    assert order["admin_graphql_api_id"] == f"gid://shopify/Order/{order['id']}"
    assert LOCAL_TIMESTAMP.match(order["created_at"]) and order["created_at"].endswith("-05:00")
    assert MONEY.match(order["total_price"])
    assert MONEY.match(order["total_price_set"]["shop_money"]["amount"])
    assert isinstance(order["billing_address"]["latitude"], float)
    assert isinstance(order["line_items"][0]["tax_lines"][0]["rate"], float)
    assert isinstance(order["tags"], str)
    assert order["customer"]["id"] > 2**53
    everything = json.dumps(orders, ensure_ascii=False)
    assert any(ord(char) > 0x2000 for char in everything)
    assert any(o["refunds"] for o in orders)
    assert any(isinstance(o["refunds"][0]["refund_line_items"][0]["subtotal"], float) for o in orders if o["refunds"])
    assert any(o["fulfillments"] for o in orders)
    assert any(o["cancelled_at"] for o in orders) and any(o["closed_at"] is None for o in orders)
    assert any(", " in o["tags"] for o in orders)
    same_second = sum(1 for a, b in zip(orders, orders[1:], strict=False) if a["created_at"] == b["created_at"])
    assert same_second > 10


def test_large_orders_are_several_hundred_kb(simulator: Simulator):
    orders = simulator.records("acme", "orders")
    sizes = [len(json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode()) for o in orders]
    assert min(sizes) < 10_000
    assert max(sizes) > 300_000
    assert len(orders[399]["line_items"]) == 300


def test_products_have_variants_and_customers_have_addresses(simulator: Simulator):
    product = simulator.records("acme", "products")[0]
    assert product["variants"] and product["variants"][0]["product_id"] == product["id"]
    assert MONEY.match(product["variants"][0]["price"])
    assert isinstance(product["variants"][0]["weight"], float)
    customer = simulator.records("acme", "customers")[0]
    assert customer["addresses"][0]["customer_id"] == customer["id"]
    assert customer["default_address"]["default"] is True


def test_same_seed_gives_same_data():
    config = ShopConfig("s", "tok", orders=20, products=5, customers=5, seed=42)
    first = Simulator([config])
    second = Simulator([config])
    for data_type in ("orders", "products", "customers"):
        documents = first.records("s", data_type)
        again = second.records("s", data_type)
        for document in (*documents, *again):
            for key in ("created_at", "updated_at"):
                document.pop(key, None)
        assert [d["id"] for d in documents] == [d["id"] for d in again]
        assert documents[3]["line_items" if data_type == "orders" else "id"] == \
            again[3]["line_items" if data_type == "orders" else "id"]


def test_updates_creates_and_deletes_while_serving():
    with Simulator([ShopConfig("s", "tok", orders=50, seed=2, plan="unlimited")]) as simulator:
        client = ShopClient(simulator, "s", "tok")
        before = {o["id"]: o for o in simulator.records("s", "orders")}
        updated = simulator.update_records("s", "orders", n=3, seed=1)
        after = {o["id"]: o for o in simulator.records("s", "orders")}
        for order_id in updated:
            assert datetime.fromisoformat(after[order_id]["updated_at"]) > \
                datetime.fromisoformat(before[order_id]["updated_at"])
        created = simulator.create_records("s", "orders", n=2, seed=1)
        assert min(created) > max(before)
        deleted = simulator.delete_records("s", "orders", n=2, seed=9)
        listed = [o["id"] for o in client.all_pages("orders.json", status="any", limit=250)[0].json()["orders"]]
        assert set(created) <= set(listed) and not set(deleted) & set(listed)
        assert client.get(f"orders/{deleted[0]}.json").status_code == 404
        events = client.get("events.json", filter="Order", verb="destroy").json()["events"]
        assert [e["subject_id"] for e in events] == deleted
        assert events[0]["subject_type"] == "Order" and events[0]["verb"] == "destroy"
        assert client.get("events.json", filter="Product", verb="destroy").json() == {"events": []}
        assert simulator.deleted_ids("s", "orders") == deleted
        versions = simulator.record_versions("s", "orders")
        assert len(versions) == 50 and versions[updated[0]] == after[updated[0]]["updated_at"]


def test_mutations_over_the_admin_api():
    import requests

    with Simulator([ShopConfig("s", "tok", orders=10, customers=4)]) as simulator:
        admin = f"{simulator.base_url}/_simulator/shops/s/records"
        created = requests.post(f"{admin}/customers/create", json={"n": 2}, timeout=5).json()["ids"]
        deleted = requests.post(f"{admin}/orders/delete", json={"ids": [simulator.records("s", "orders")[0]["id"]]},
                                timeout=5).json()["ids"]
        updated = requests.post(f"{admin}/orders/update", json={"n": 3, "seed": 4}, timeout=5).json()["ids"]
        assert len(created) == 2 and len(deleted) == 1 and len(updated) == 3
        listed = requests.get(f"{admin}/customers", timeout=5).json()["customers"]
        assert [c["id"] for c in listed][-2:] == created
        versions = requests.get(f"{admin}/orders/versions", timeout=5).json()["versions"]
        assert len(versions) == 9
        shops = requests.get(f"{simulator.base_url}/_simulator/shops", timeout=5).json()
        assert shops == {"shops": [{"name": "s", "url": simulator.shop_url("s"), "token": "tok"}]}
