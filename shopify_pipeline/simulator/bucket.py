"""Shopify's rate limits: the REST leaky bucket (one per request) and the GraphQL cost bucket (points)."""

from __future__ import annotations

import math
import threading
import time

# Shopify answers a 429 with this Retry-After on every plan (observed), scaled here by time_scale.
SHOPIFY_RETRY_AFTER_SECONDS = 2.0


class LeakyBucket:
    """A thread-safe leaky bucket of `size` requests leaking `leak_per_second` × `time_scale` per second."""

    def __init__(self, size: int, leak_per_second: float, time_scale: float = 1.0) -> None:
        self.size = size
        self.leak_per_second = leak_per_second
        self.time_scale = time_scale
        self._level = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _leak(self, now: float) -> None:
        self._level = max(0.0, self._level - (now - self._last) * self.leak_per_second * self.time_scale)
        self._last = now

    def take(self) -> bool:
        """Add one request if it fits; True when it did, False when the request must get a 429."""
        if self.leak_per_second == 0.0:
            return True
        with self._lock:
            self._leak(time.monotonic())
            if self._level + 1.0 > self.size + 1e-9:
                return False
            self._level += 1.0
            return True

    def level(self) -> float:
        """The current fill level (requests in the bucket, fractional while leaking)."""
        with self._lock:
            self._leak(time.monotonic())
            return self._level

    def call_limit_header(self) -> str:
        """The value of X-Shopify-Shop-Api-Call-Limit, e.g. "32/40"."""
        return f"{math.ceil(self.level() - 1e-9)}/{self.size}"

    def retry_after_header(self) -> str:
        """The Retry-After value of a 429: a decimal string, "2.0" at time_scale 1, "0.2" at 10."""
        return str(round(SHOPIFY_RETRY_AFTER_SECONDS / self.time_scale, 3))


# Shopify's GraphQL bucket holds 20 seconds of restore (maximumAvailable 2000 at 100 points/s).
GRAPHQL_BUCKET_SECONDS = 20


class CostBucket:
    """Shopify's GraphQL cost bucket: starts full, a query takes its cost, points restore steadily.

    `restore_rate` is points per second of Shopify time; the bucket restores `restore_rate` × `time_scale`
    per real second and reports that scaled rate, so a client pacing by it waits the right real time.
    """

    def __init__(self, restore_rate: float, time_scale: float = 1.0) -> None:
        self.maximum = GRAPHQL_BUCKET_SECONDS * restore_rate
        self.restore_rate = restore_rate * time_scale
        self._available = self.maximum
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _restore(self, now: float) -> None:
        self._available = min(self.maximum, self._available + (now - self._last) * self.restore_rate)
        self._last = now

    def take(self, cost: int) -> bool:
        """Take `cost` points if that many are available; False when the query must be THROTTLED."""
        with self._lock:
            self._restore(time.monotonic())
            if self._available + 1e-9 < cost:
                return False
            self._available -= cost
            return True

    def refund(self, points: int) -> None:
        """Give back what a query was charged beyond its actual cost."""
        with self._lock:
            self._restore(time.monotonic())
            self._available = min(self.maximum, self._available + max(points, 0))

    def status(self) -> dict[str, float | int]:
        """Shopify's `throttleStatus`: maximumAvailable, currentlyAvailable (whole points), restoreRate."""
        with self._lock:
            self._restore(time.monotonic())
            return {"maximumAvailable": float(self.maximum), "currentlyAvailable": int(self._available),
                    "restoreRate": float(self.restore_rate)}
