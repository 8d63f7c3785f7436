"""Proactive pacing from Shopify's leaky bucket, shared by every thread that talks to one shop.

Shopify tells us the bucket on every answer (`X-Shopify-Shop-Api-Call-Limit: 32/40`). We model the
bucket locally (level leaks at `leak_per_second`), reserve a slot before each request and wait when
the bucket would overflow, so a sync runs near the plan's ceiling and rarely sees a 429.

Readings are not trusted blindly: a header that makes no sense (`1000000000/40`, `inf/40`, `41/40`) is
clamped or ignored, the margin never eats the whole of a tiny bucket, and no single pause is longer than
the time the bucket takes to drain, so a broken header can slow a sync but never stall it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

MAX_BUCKET = 100_000  # far above any plan (Plus: 400): a larger "size" is a broken header, not a bucket
MIN_LEAK_PER_SECOND = 0.05


class Pacer:
    """A local model of one shop's leaky bucket."""

    def __init__(
        self,
        leak_per_second: float = 2.0,
        size: int = 40,
        margin: int = 2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.leak_per_second = max(MIN_LEAK_PER_SECOND, leak_per_second)
        self.size = size
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._level = 0.0
        self._at = clock()
        # An earlier reading (time, used) and how many answers came since: the leak rate is learned
        # from them, since plans (and a time-scaled simulator) leak at different rates.
        self._reference: tuple[float, float] | None = None
        self._answers_since = 0
        self.waited_seconds = 0.0

    def _leak(self, now: float) -> None:
        self._level = max(0.0, self._level - (now - self._at) * self.leak_per_second)
        self._at = now

    def _usable(self) -> float:
        """Requests the bucket may hold: the margin keeps a few free, but never the whole of a tiny bucket."""
        return self.size - min(self.margin, max(0, self.size - 1))

    def acquire(self) -> float:
        """Reserve one request, sleeping until the bucket has room. Returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._leak(now)
                room = self._usable() - self._level
                if room >= 1 - 1e-9:  # float leak arithmetic must not leave us a hair short forever
                    self._level += 1
                    self.waited_seconds += waited
                    return waited
                # Never longer than a full bucket takes to drain, whatever the model says.
                pause = max(0.001, min((1 - room) / self.leak_per_second, self.size / self.leak_per_second))
            self._sleep(pause)
            waited += pause

    def observe(self, header: str | None) -> None:
        """Correct the model from an answer's `X-Shopify-Shop-Api-Call-Limit` ("used/size")."""
        if not header or "/" not in header:
            return
        try:
            used, size = (float(part) for part in header.split("/", 1))
        except ValueError:
            return
        if not (math.isfinite(used) and math.isfinite(size)) or not 1 <= size <= MAX_BUCKET or used < 0:
            return  # not a bucket: ignore the reading rather than wait for it
        used = min(used, size)  # "41/40": over the top means full, not a debt to sit out
        with self._lock:
            now = self._clock()
            self._leak(now)
            if int(size) != self.size:
                # Every Shopify plan leaks a twentieth of its bucket per second (40/2, 80/4, 400/20):
                # a good first guess until the readings say better.
                self.size = int(size)
                self.leak_per_second = max(self.leak_per_second, self.size / 20)
            self._learn_leak(now, used)
            # Our reservations for requests still in flight are not in Shopify's count yet: keep the max.
            self._level = max(self._level, used)

    def _learn_leak(self, now: float, used: float) -> None:
        """Between two readings Shopify counted one request per answer and leaked the rest."""
        self._answers_since += 1
        if self._reference is None:
            self._reference = (now, used)
            self._answers_since = 0
            return
        then, before = self._reference
        elapsed = now - then
        if elapsed < 2.0:
            return
        estimate = (before + self._answers_since - used) / elapsed
        if estimate > 0 and math.isfinite(estimate):
            if used > 1:  # a reading from a non-empty bucket: the estimate is exact up to noise
                learned = 0.5 * self.leak_per_second + 0.5 * min(estimate, self.size)
            else:  # the bucket may have run dry in between: the estimate is only a lower bound
                learned = max(self.leak_per_second, min(estimate, self.size))
            # Every plan leaks at least a twentieth of its bucket a second: a header that always says
            # "full" must not talk the rate down towards zero (each wait would make the next estimate lower).
            self.leak_per_second = max(learned, self.size / 20, MIN_LEAK_PER_SECOND)
        self._reference = (now, used)
        self._answers_since = 0

    def throttled(self, retry_after: float) -> None:
        """Shopify answered 429: the bucket is full (the client sleeps `retry_after` itself)."""
        with self._lock:
            self._leak(self._clock())
            self._level = max(self._level, float(self._usable()))


class FixedGapPacer:
    """The seed's pacing: a fixed gap between requests (2 min for initial/manual, 30 s for daily).

    Kept as an option (`SHOPIFY_PACING=fixed`); the adaptive Pacer is the default because it runs near
    the plan's ceiling instead of far below it."""

    def __init__(self, gap_seconds: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.gap_seconds = gap_seconds
        self.leak_per_second = 1 / gap_seconds if gap_seconds else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0
        self.waited_seconds = 0.0

    def acquire(self) -> float:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.gap_seconds
        wait = start - now
        if wait > 0:
            self._sleep(wait)
            self.waited_seconds += wait
        return wait

    def observe(self, header: str | None) -> None:
        """Fixed pacing ignores the bucket."""

    def throttled(self, retry_after: float) -> None:
        with self._lock:
            self._next = max(self._next, self._clock() + retry_after)


class PacerRegistry:
    """One Pacer per shop, shared by every client in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pacers: dict[str, Pacer] = {}

    def for_shop(self, shop: str, leak_per_second: float, margin: int) -> Pacer:
        with self._lock:
            if shop not in self._pacers:
                self._pacers[shop] = Pacer(leak_per_second=leak_per_second, margin=margin)
            return self._pacers[shop]


PACERS = PacerRegistry()
