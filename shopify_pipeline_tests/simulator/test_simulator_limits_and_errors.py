"""Rate limits, shop states, auth, scopes and API versions, through HTTP."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from shopify_pipeline.simulator import FaultConfig, ShopConfig, Simulator

from .conftest import VERSION, ShopClient

THROTTLED_BODY = ('{"errors":"Exceeded 2 calls per second for api client. Reduce request rates to resume '
                  'uninterrupted service."}')


@pytest.mark.parametrize(("plan", "size"), [("standard", 40), ("advanced", 80), ("plus", 400)])
def test_leaky_bucket_fills_then_answers_429(plan: str, size: int):
    # A slow leak (time_scale < 1) so the bucket cannot drain while the test fills it.
    with Simulator([ShopConfig("s", "tok", orders=3, plan=plan)], time_scale=0.01) as simulator:
        client = ShopClient(simulator, "s", "tok")
        for used in range(1, size + 1):
            response = client.get("orders/count.json")
            assert response.status_code == 200
            assert response.headers["X-Shopify-Shop-Api-Call-Limit"] == f"{used}/{size}"
        throttled = client.get("orders/count.json")
        assert throttled.status_code == 429
        assert throttled.text == THROTTLED_BODY
        assert throttled.headers["Retry-After"] == "200.0"
        stats = simulator.stats("s")
        assert stats["throttled"] == 1
        assert stats["requests"]["orders/count"] == size + 1
        assert stats["bucket_level"] == pytest.approx(size, abs=0.5)


def test_time_scale_speeds_the_leak_and_retry_after():
    with Simulator([ShopConfig("s", "tok", orders=3)], time_scale=10) as simulator:
        client = ShopClient(simulator, "s", "tok")
        statuses = [client.get("orders/count.json").status_code for _ in range(60)]
        assert 429 in statuses
        throttled = client.get("orders/count.json")
        while throttled.status_code != 429:
            throttled = client.get("orders/count.json")
        assert throttled.headers["Retry-After"] == "0.2"
        float(throttled.headers["Retry-After"])
        time.sleep(float(throttled.headers["Retry-After"]))
        assert client.get("orders/count.json").status_code == 200


def test_call_limit_header_can_be_missing_on_429():
    faults = FaultConfig(call_limit_header_on_429=False)
    with Simulator([ShopConfig("s", "tok", faults=faults)], time_scale=0.01) as simulator:
        client = ShopClient(simulator, "s", "tok")
        responses = [client.get("orders/count.json") for _ in range(41)]
        assert responses[-1].status_code == 429
        assert "X-Shopify-Shop-Api-Call-Limit" not in responses[-1].headers
        assert "Retry-After" in responses[-1].headers


def test_bad_token_gets_shopifys_401(simulator: Simulator, acme: ShopClient):
    response = acme.get("orders.json", token="wrong")
    assert response.status_code == 401
    assert response.text == ('{"errors":"[API] Invalid API key or access token (unrecognized login or '
                             'wrong password)"}')
    assert acme.get("orders.json", token="shpat_tiny").status_code == 401


def test_unknown_shop_and_resource_are_404(simulator: Simulator, acme: ShopClient):
    response = requests.get(f"{simulator.base_url}/shops/nope/admin/api/{VERSION}/orders.json",
                            headers={"X-Shopify-Access-Token": "shpat_acme"}, timeout=5)
    assert response.status_code == 404
    assert response.json() == {"errors": "Not Found"}
    assert acme.get("widgets.json").status_code == 404
    assert acme.get("orders/1.json").json() == {"errors": "Not Found"}


def test_single_order_by_id(acme: ShopClient, simulator: Simulator):
    order = simulator.records("acme", "orders")[5]
    assert acme.get(f"orders/{order['id']}.json").json() == {"order": order}


@pytest.mark.parametrize(("state", "status", "body"), [
    ("frozen", 402, {"errors": "Unavailable Shop"}),
    ("locked", 423, {"errors": "This shop is unavailable"}),
])
def test_frozen_and_locked_shops(state: str, status: int, body: dict):
    with Simulator([ShopConfig("s", "tok", orders=3, state=state)]) as simulator:
        client = ShopClient(simulator, "s", "tok")
        response = client.get("orders.json")
        assert (response.status_code, response.json()) == (status, body)
        simulator.set_state("s", "active")
        assert client.get("orders.json").status_code == 200


def test_missing_scope_is_403_naming_the_scope():
    config = ShopConfig("s", "tok", orders=3, customers=2, scopes=("read_orders", "read_all_orders"))
    with Simulator([config]) as simulator:
        client = ShopClient(simulator, "s", "tok")
        response = client.get("customers.json")
        assert response.status_code == 403
        assert response.json() == {"errors": "[API] This action requires merchant approval for "
                                             "read_customers scope."}
        scopes = requests.get(f"{simulator.shop_url('s')}/admin/oauth/access_scopes.json",
                              headers={"X-Shopify-Access-Token": "tok"}, timeout=5).json()
        assert scopes == {"access_scopes": [{"handle": "read_orders"}, {"handle": "read_all_orders"}]}


def test_without_read_all_orders_only_60_days_are_visible():
    config = ShopConfig("s", "tok", orders=400, history_days=240, plan="unlimited",
                        scopes=("read_orders", "read_products", "read_customers"))
    with Simulator([config]) as simulator:
        client = ShopClient(simulator, "s", "tok")
        cutoff = datetime.now(timezone.utc) - timedelta(days=60)
        truth = simulator.records("s", "orders")
        recent = [o["id"] for o in truth if datetime.fromisoformat(o["created_at"]) >= cutoff]
        assert 0 < len(recent) < len(truth)
        pages = client.all_pages("orders.json", status="any", limit=250)
        assert [o["id"] for page in pages for o in page.json()["orders"]] == recent
        assert client.get("orders/count.json", status="any").json() == {"count": len(recent)}
        simulator.set_scopes("s", ("read_orders", "read_all_orders"))
        assert client.get("orders/count.json", status="any").json() == {"count": len(truth)}


def test_api_version_header_and_retired_versions_fall_forward(acme: ShopClient, simulator: Simulator):
    response = acme.get("shop.json")
    assert response.headers["X-Shopify-API-Version"] == VERSION
    assert response.json()["shop"]["myshopify_domain"] == "acme.myshopify.com"
    # Supported at the end of 2026: 2026-01 to 2026-10; anything older is answered by 2026-01.
    for asked, answered in (("2019-04", "2026-01"), ("2025-10", "2026-01"), ("2026-01", "2026-01"),
                            ("2026-07", "2026-07")):
        orders = requests.get(f"{simulator.shop_url('acme')}/admin/api/{asked}/orders.json",
                              params={"limit": 2, "status": "any"},
                              headers={"X-Shopify-Access-Token": "shpat_acme"}, timeout=5)
        assert orders.status_code == 200 and len(orders.json()["orders"]) == 2
        assert orders.headers["X-Shopify-API-Version"] == answered
    for unknown in ("2025-13", "2027-01"):
        bogus = requests.get(f"{simulator.shop_url('acme')}/admin/api/{unknown}/shop.json",
                             headers={"X-Shopify-Access-Token": "shpat_acme"}, timeout=5)
        assert bogus.status_code == 404
