"""Shopify's REST leaky bucket: each request adds one; the bucket leaks at a steady rate."""

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
