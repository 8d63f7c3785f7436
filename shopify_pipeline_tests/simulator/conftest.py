"""Fixtures for the simulator's tests: a running simulator and a small HTTP helper around requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shopify_pipeline.simulator import ShopConfig, Simulator

VERSION = "2026-10"


class ShopClient:
    """requests against one simulated shop, the way a Shopify client would call it."""

    def __init__(self, simulator: Simulator, shop: str, token: str) -> None:
        self.simulator = simulator
        self.shop = shop
        self.token = token
        self.session = requests.Session()

    def url(self, path: str) -> str:
        return f"{self.simulator.shop_url(self.shop)}/admin/api/{VERSION}/{path}"

    def get(self, path: str, token: str | None = None, timeout: float = 10, **params: Any) -> requests.Response:
        headers = {"X-Shopify-Access-Token": self.token if token is None else token}
        return self.session.get(self.url(path), params=params, headers=headers, timeout=timeout)

    def follow(self, url: str, timeout: float = 10) -> requests.Response:
        return self.session.get(url, headers={"X-Shopify-Access-Token": self.token}, timeout=timeout)

    def all_pages(self, path: str, **params: Any) -> list[requests.Response]:
        """Every page of a listing, following rel="next" as given."""
        responses = [self.get(path, **params)]
        while "next" in responses[-1].links:
            responses.append(self.follow(responses[-1].links["next"]["url"]))
        return responses


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    """One simulator per test module: "acme" without rate limits, "tiny" on the standard plan."""
    shops = [
        ShopConfig("acme", "shpat_acme", orders=1000, products=60, customers=80, seed=7, plan="unlimited",
                   large_order_every=400),
        ShopConfig("tiny", "shpat_tiny", orders=30, products=3, customers=3, seed=1),
    ]
    with Simulator(shops, time_scale=20) as running:
        yield running


@pytest.fixture()
def acme(simulator: Simulator) -> ShopClient:
    return ShopClient(simulator, "acme", "shpat_acme")
