"""One simulated shop at run time: its data, state, scopes, tokens, rate-limit buckets, faults and counters."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from shopify_pipeline.simulator.auth import ShopAuth
from shopify_pipeline.simulator.bucket import CostBucket, LeakyBucket
from shopify_pipeline.simulator.config import (
    DATA_TYPES,
    GRAPHQL_RESTORE_RATES,
    SHOP_STATES,
    FaultConfig,
    ShopConfig,
)
from shopify_pipeline.simulator.data import Renderer, generate
from shopify_pipeline.simulator.faults import FaultPlan
from shopify_pipeline.simulator.store import RenderCache, ShopData


class ShopRuntime:
    """A shop as the server sees it; every method is safe to call from several threads."""

    def __init__(self, config: ShopConfig, time_scale: float, anchor: int, cache: RenderCache) -> None:
        self.config = config
        self.name = config.name
        self.token = config.token
        self.state = config.state
        self.scopes = tuple(config.scopes)
        self.time_scale = time_scale
        counts = {"orders": config.orders, "products": config.products, "customers": config.customers}
        large = {"orders": (config.large_order_every, config.large_order_line_items),
                 "products": (config.large_product_every, config.large_product_variants),
                 "customers": (0, 0)}
        collections = {
            data_type: generate(data_type, counts[data_type], config.seed, anchor, config.history_days,
                                *large[data_type])
            for data_type in DATA_TYPES
        }
        products = collections["products"]  # the list the products collection keeps (and appends to)
        renderer = Renderer(config.name, config.seed, config.timezone_offset_minutes, config.products,
                            config.customers,
                            lambda index: products[index].size if index < len(products) else 0)
        self.data = ShopData(renderer, collections, config.seed, config.large_order_every,
                             config.large_order_line_items, cache, large["products"])
        self.faults = FaultPlan(config.faults)
        self.auth = (ShopAuth(config.auth, config.token, time_scale, lambda: self.scopes)
                     if config.auth is not None else None)
        self._buckets: dict[str, LeakyBucket] = {}
        self._cost_buckets: dict[str, CostBucket] = {}
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._faults_served: Counter[str] = Counter()
        self._graphql_throttled = 0
        self._graphql_roots: Counter[str] = Counter()
        self.installed = True  # False after an uninstall: Shopify revokes the app's tokens

    def accepts(self, token: str | None) -> bool:
        """Whether an API request with this X-Shopify-Access-Token is authenticated."""
        if not self.installed:
            return False
        if self.auth is None:
            return token == self.token
        return self.auth.accepts(token or "")

    def bucket_key(self, token: str | None) -> str | None:
        """The rate-limit key of an authenticated request: its token, or the app's when tokens rotate (Shopify
        limits per app and shop, so a new access token must not bring a fresh bucket)."""
        return token if self.auth is None else self.token

    def bucket(self, token: str) -> LeakyBucket:
        """The leaky bucket of (this shop, `token`), created on first use from the shop's plan."""
        with self._lock:
            if token not in self._buckets:
                size, leak = self.config.rest_bucket
                self._buckets[token] = LeakyBucket(size, leak, self.time_scale)
            return self._buckets[token]

    def cost_bucket(self, token: str) -> CostBucket:
        """The GraphQL cost bucket of (this shop, `token`), created full on first use from the shop's plan."""
        with self._lock:
            if token not in self._cost_buckets:
                self._cost_buckets[token] = CostBucket(GRAPHQL_RESTORE_RATES[self.config.plan], self.time_scale)
            return self._cost_buckets[token]

    def set_state(self, state: str) -> None:
        """Make the shop active, frozen (402) or locked (423)."""
        if state not in SHOP_STATES:
            raise ValueError(f"unknown shop state {state!r}; expected one of {', '.join(SHOP_STATES)}")
        self.state = state

    def set_faults(self, faults: FaultConfig) -> None:
        """Serve these faults from the next request on."""
        self.faults.set(faults)

    def count_request(self, endpoint: str) -> None:
        """Count one request to `endpoint` (e.g. "orders", "orders/count")."""
        with self._lock:
            self._requests[endpoint] += 1

    def count_response(self, status: int, fault: str | None) -> None:
        """Count one answer (status 0 for a dropped connection) and the fault that shaped it."""
        with self._lock:
            self._statuses[str(status)] += 1
            if fault:
                self._faults_served[fault] += 1

    def count_graphql_roots(self, aliases: tuple[str, ...]) -> None:
        """Count one GraphQL request under each root field it asks for ("graphql:orders" counts as "orders")."""
        with self._lock:
            self._graphql_roots.update(alias.removeprefix("graphql:") for alias in aliases)

    def count_graphql_throttled(self) -> None:
        """Count one GraphQL answer that was THROTTLED (HTTP 200, so not among the 429s)."""
        with self._lock:
            self._graphql_throttled += 1

    def stats(self) -> dict[str, Any]:
        """Counters for tests: requests per endpoint, answers per status, 429s, faults, bucket level, and for a
        shop with `auth` the token endpoint's counters."""
        bucket = self.bucket(self.token)
        cost_bucket = self.cost_bucket(self.token)
        auth = {"auth": self.auth.stats()} if self.auth is not None else {}
        with self._lock:
            return {
                **auth,
                "requests": dict(self._requests),
                "total_requests": sum(self._requests.values()),
                "responses": dict(self._statuses),
                "throttled": self._statuses.get("429", 0),
                "faults_served": dict(self._faults_served),
                "bucket_level": round(bucket.level(), 3),
                "bucket_size": bucket.size,
                "leak_per_second": bucket.leak_per_second * bucket.time_scale,
                "graphql_throttled": self._graphql_throttled,
                "graphql_roots": dict(self._graphql_roots),
                "graphql_throttle_status": cost_bucket.status(),
                "state": self.state,
                "records": {data_type: collection.count(lambda _: True)
                            for data_type, collection in self.data.collections.items()},
            }
