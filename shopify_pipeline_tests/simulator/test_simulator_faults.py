"""Faults on demand: each kind as a client meets it, deterministic rules, seeded rates, run-time switching."""

from __future__ import annotations

import json
import time

import pytest
import requests

from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator

from .conftest import ShopClient


@pytest.fixture()
def faulty():
    with Simulator([ShopConfig("f", "tok", orders=300, seed=5, plan="unlimited")]) as simulator:
        yield simulator


def one_rule(simulator: Simulator, kind: str, **rule) -> ShopClient:
    simulator.set_faults("f", FaultConfig(rules=(FaultRule(kind, **rule),), hang_seconds=1.0,
                                          gateway_timeout_seconds=0.3))
    return ShopClient(simulator, "f", "tok")


def test_500_is_json_and_502_503_430_are_html(faulty: Simulator):
    client = one_rule(faulty, "500")
    response = client.get("orders.json")
    assert (response.status_code, response.json()) == (500, {"errors": "Internal Server Error"})
    assert client.get("orders.json").status_code == 200
    for status in (502, 503, 430):
        client = one_rule(faulty, str(status))
        response = client.get("orders.json")
        assert response.status_code == status
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.text.startswith("<!DOCTYPE html>")
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.text)


def test_504_comes_after_a_delay(faulty: Simulator):
    client = one_rule(faulty, "504")
    started = time.monotonic()
    response = client.get("orders.json")
    assert response.status_code == 504
    assert time.monotonic() - started >= 0.3


def test_hang_outlasts_the_client_timeout(faulty: Simulator):
    client = one_rule(faulty, "hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.get("orders.json", timeout=0.3)
    assert client.get("orders.json").status_code == 200


def test_reset_drops_the_connection_without_a_response(faulty: Simulator):
    client = one_rule(faulty, "reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.get("orders.json")
    assert client.get("orders.json").status_code == 200
    assert faulty.stats("f")["faults_served"] == {"reset": 1}


def test_truncated_body_is_an_incomplete_read(faulty: Simulator):
    client = one_rule(faulty, "truncate")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        client.get("orders.json", status="any", limit=250)


def test_malformed_body_is_200_with_broken_json(faulty: Simulator):
    client = one_rule(faulty, "malformed")
    response = client.get("orders.json")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_forced_429_and_404(faulty: Simulator):
    client = one_rule(faulty, "429")
    response = client.get("orders.json")
    assert response.status_code == 429 and "Retry-After" in response.headers
    client = one_rule(faulty, "404", endpoint="customers")
    assert client.get("orders.json").status_code == 200
    assert client.get("customers.json").json() == {"errors": "Not Found"}


def test_timeouts_on_page_5_then_success(faulty: Simulator):
    client = one_rule(faulty, "hang", page=5, times=2)
    response = client.get("orders.json", status="any", limit=25)
    pages, timeouts = 1, 0
    while "next" in response.links:
        try:
            response = client.follow(response.links["next"]["url"], timeout=0.3)
        except requests.exceptions.ReadTimeout:
            timeouts += 1
            continue
        pages += 1
    assert (pages, timeouts) == (12, 2)


def test_the_nth_request_fails(faulty: Simulator):
    client = one_rule(faulty, "503", skip=2, times=1)
    assert [client.get("orders/count.json").status_code for _ in range(5)] == [200, 200, 503, 200, 200]


def test_random_faults_repeat_for_the_same_seed(faulty: Simulator):
    def run() -> list[int]:
        faulty.set_faults("f", FaultConfig(seed=11, error_500_rate=0.3, error_503_rate=0.2))
        client = ShopClient(faulty, "f", "tok")
        return [client.get("orders.json", limit=250, fields="id").status_code for _ in range(40)]

    first = run()
    assert first == run()
    assert {200, 500, 503} <= set(first)


def test_500s_grow_with_limit(faulty: Simulator):
    faulty.set_faults("f", FaultConfig(seed=3, error_500_rate=0.8))
    client = ShopClient(faulty, "f", "tok")
    small = [client.get("orders.json", limit=10, fields="id").status_code for _ in range(60)].count(500)
    large = [client.get("orders.json", limit=250, fields="id").status_code for _ in range(60)].count(500)
    assert small < large


def test_latency_is_added_to_every_request(faulty: Simulator):
    faulty.set_faults("f", FaultConfig(latency_seconds=0.1))
    client = ShopClient(faulty, "f", "tok")
    started = time.monotonic()
    for _ in range(3):
        assert client.get("orders/count.json").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_faults_switch_over_http_mid_sync(faulty: Simulator):
    client = ShopClient(faulty, "f", "tok")
    admin = f"{faulty.base_url}/_simulator/shops/f"
    first = client.get("orders.json", status="any", limit=50)
    body = {"rules": [{"kind": "502", "endpoint": "orders", "times": 1}]}
    assert requests.post(f"{admin}/faults", json=body, timeout=5).json()["rules"][0]["kind"] == "502"
    assert client.follow(first.links["next"]["url"]).status_code == 502
    assert client.follow(first.links["next"]["url"]).status_code == 200
    stats = requests.get(f"{admin}/stats", timeout=5).json()
    assert stats["faults_served"] == {"502": 1}
    assert stats["requests"]["orders"] == 3
    bad = requests.post(f"{admin}/faults", json={"error_500_chance": 1}, timeout=5)
    assert bad.status_code == 400
