"""Cursor pagination and list filters, checked through HTTP against the simulator's source of truth."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime

import pytest

from shopify_pipeline.simulator import ShopConfig, Simulator

from .conftest import ShopClient


def ids_of(responses, key="orders"):
    return [record["id"] for response in responses for record in response.json()[key]]


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def test_limit_defaults_to_50_and_caps_at_250(acme: ShopClient):
    assert len(acme.get("orders.json", status="any").json()["orders"]) == 50
    assert len(acme.get("orders.json", status="any", limit=250).json()["orders"]) == 250
    too_many = acme.get("orders.json", limit=251)
    assert too_many.status_code == 400
    assert too_many.text == '{"errors":"Limit exceeds maximum limit of 250"}'


def test_page_parameter_is_refused(acme: ShopClient):
    response = acme.get("orders.json", page=2)
    assert response.status_code == 400
    assert response.json() == {"errors": {"page": "page cannot be passed."}}


def test_paging_visits_every_order_once_with_shopify_links(acme: ShopClient, simulator: Simulator):
    pages = acme.all_pages("orders.json", status="any", limit=250)
    truth = [order["id"] for order in simulator.records("acme", "orders")]
    assert len(pages) == 4
    assert ids_of(pages) == truth
    assert "previous" not in pages[0].links
    for page in pages[1:-1]:
        previous, following = page.headers["Link"].split(", ")
        assert previous.endswith('; rel="previous"') and following.endswith('; rel="next"')
    assert pages[-1].headers["Link"].endswith('; rel="previous"') and ", " not in pages[-1].headers["Link"]
    assert "next" not in pages[-1].links
    next_url = pages[0].links["next"]["url"]
    assert next_url.startswith(acme.url("orders.json?limit=250&page_info="))


def test_single_page_has_no_link_header(acme: ShopClient):
    response = acme.get("orders.json", status="any", ids="820982911946154508")
    assert response.json()["orders"][0]["id"] == 820982911946154508
    assert "Link" not in response.headers


def test_previous_link_returns_the_page_before(acme: ShopClient):
    first = acme.get("orders.json", status="any", limit=100)
    second = acme.follow(first.links["next"]["url"])
    back = acme.follow(second.links["previous"]["url"])
    assert ids_of([back]) == ids_of([first])
    assert "previous" not in back.links
    assert ids_of([acme.follow(back.links["next"]["url"])]) == ids_of([second])


def test_filters_with_page_info_are_refused_with_shopifys_body(acme: ShopClient):
    first = acme.get("orders.json", status="any", limit=10)
    token = first.links["next"]["url"].split("page_info=")[1]
    response = acme.get("orders.json", page_info=token, updated_at_min="2024-01-01T00:00:00Z")
    assert response.status_code == 400
    assert response.json() == {"errors": {"updated_at_min": "updated_at_min cannot be passed when page_info "
                                          "is present. See https://shopify.dev/api/usage/pagination-rest "
                                          "for more information."}}
    assert acme.get("orders.json", page_info=token, status="any").status_code == 400
    assert acme.get("orders.json", page_info=token, limit=5, fields="id").status_code == 200


def test_tampered_page_info_is_refused(acme: ShopClient):
    first = acme.get("orders.json", status="any", limit=10)
    token = first.links["next"]["url"].split("page_info=")[1]
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    payload["last_id"] -= 1
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    for bad in (forged, "garbage", token[:-3]):
        response = acme.get("orders.json", page_info=bad)
        assert response.status_code == 400
        assert response.json() == {"errors": {"page_info": "Invalid value."}}


def test_page_info_is_opaque_base64_json_with_filters_and_position(acme: ShopClient):
    first = acme.get("orders.json", status="closed", limit=10)
    token = first.links["next"]["url"].split("page_info=")[1]
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert payload["filters"] == {"status": ["closed"]}
    assert payload["direction"] == "next"
    assert payload["last_id"] == first.json()["orders"][-1]["id"]


def test_orders_default_to_open(acme: ShopClient, simulator: Simulator):
    truth = simulator.records("acme", "orders")
    by_state = {state: [o["id"] for o in truth if _state(o) == state] for state in ("open", "closed", "cancelled")}
    assert all(by_state.values())
    assert ids_of(acme.all_pages("orders.json", limit=250)) == by_state["open"]
    assert ids_of(acme.all_pages("orders.json", limit=250, status="closed")) == by_state["closed"]
    assert ids_of(acme.all_pages("orders.json", limit=250, status="cancelled")) == by_state["cancelled"]
    assert acme.get("orders/count.json").json() == {"count": len(by_state["open"])}
    assert acme.get("orders/count.json", status="any").json() == {"count": len(truth)}


def _state(order: dict) -> str:
    if order["cancelled_at"]:
        return "cancelled"
    return "closed" if order["closed_at"] else "open"


def test_time_filters_are_inclusive_and_compare_in_utc(acme: ShopClient, simulator: Simulator):
    truth = simulator.records("acme", "orders")
    pivot = truth[500]["created_at"]
    as_utc = datetime.fromisoformat(pivot).astimezone(datetime.now().astimezone().tzinfo)
    expected_min = [o["id"] for o in truth if epoch(o["created_at"]) >= epoch(pivot)]
    for bound in (pivot, as_utc.isoformat()):
        got = ids_of(acme.all_pages("orders.json", status="any", limit=250, created_at_min=bound))
        assert got == expected_min
    expected_max = [o["id"] for o in truth if epoch(o["created_at"]) <= epoch(pivot)]
    assert ids_of(acme.all_pages("orders.json", status="any", limit=250, created_at_max=pivot)) == expected_max
    updated = truth[100]["updated_at"]
    expected = [o["id"] for o in truth if epoch(o["updated_at"]) >= epoch(updated)]
    assert ids_of(acme.all_pages("orders.json", status="any", limit=250, updated_at_min=updated)) == expected
    assert acme.get("orders/count.json", status="any", updated_at_min=updated).json()["count"] == len(expected)
    assert acme.get("orders.json", created_at_min="yesterday").status_code == 400


def test_since_id_ids_and_fields(acme: ShopClient, simulator: Simulator):
    truth = [o["id"] for o in simulator.records("acme", "orders")]
    assert ids_of(acme.all_pages("orders.json", status="any", limit=250, since_id=truth[900])) == truth[901:]
    chosen = [truth[3], truth[77], truth[512]]
    picked = acme.get("orders.json", status="any", ids=",".join(map(str, chosen)), fields="id,updated_at")
    assert [o["id"] for o in picked.json()["orders"]] == chosen
    assert all(set(o) == {"id", "updated_at"} for o in picked.json()["orders"])
    pages = acme.all_pages("orders.json", status="any", limit=100, fields="id")
    assert ids_of(pages) == truth
    assert all(set(o) == {"id"} for page in pages for o in page.json()["orders"])


def test_order_by_updated_at_asc(acme: ShopClient, simulator: Simulator):
    truth = simulator.records("acme", "orders")
    expected = [o["id"] for o in sorted(truth, key=lambda o: (epoch(o["updated_at"]), o["id"]))]
    pages = acme.all_pages("orders.json", status="any", limit=250, order="updated_at asc")
    assert ids_of(pages) == expected


def test_products_and_customers_page_too(acme: ShopClient, simulator: Simulator):
    for data_type in ("products", "customers"):
        truth = [record["id"] for record in simulator.records("acme", data_type)]
        assert ids_of(acme.all_pages(f"{data_type}.json", limit=25), data_type) == truth
        assert acme.get(f"{data_type}/count.json").json() == {"count": len(truth)}


def test_ids_above_2_53_are_exact_in_the_raw_json(acme: ShopClient):
    response = acme.get("orders.json", status="any", limit=1)
    assert response.text.startswith('{"orders":[{"id":820982911946154508,')
    order = response.json()["orders"][0]
    assert order["id"] > 2**53 and isinstance(order["id"], int)


@pytest.mark.parametrize("order", ["id asc", "updated_at asc", "created_at desc"])
def test_paging_is_gap_free_while_records_change(order: str):
    shop = ShopConfig("busy", "tok", orders=1000, seed=3, plan="unlimited")
    with Simulator([shop]) as simulator:
        client = ShopClient(simulator, "busy", "tok")
        before = {o["id"] for o in simulator.records("busy", "orders")}
        seen: list[int] = []
        stop = threading.Event()
        deleted: list[int] = []

        def churn() -> None:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                simulator.update_records("busy", "orders", n=5, seed=round_)
                simulator.create_records("busy", "orders", n=1, seed=round_)
                deleted.extend(simulator.delete_records("busy", "orders", n=1, seed=round_))
                stop.wait(0.02)

        worker = threading.Thread(target=churn)
        worker.start()
        try:
            response = client.get("orders.json", status="any", limit=50, order=order)
            seen += [o["id"] for o in response.json()["orders"]]
            # With updated_at asc a client chases records updated ahead of it; the churn is slow
            # enough that it catches up, and the page cap stops a runaway loop.
            for _ in range(200):
                if "next" not in response.links:
                    break
                response = client.follow(response.links["next"]["url"])
                seen += [o["id"] for o in response.json()["orders"]]
            assert "next" not in response.links
        finally:
            stop.set()
            worker.join()
        survivors = before - set(deleted)
        assert survivors <= set(seen), f"{len(survivors - set(seen))} orders never served"
        if order != "updated_at asc":
            assert len(seen) == len(set(seen))
