"""Pacing by query cost for Shopify's GraphQL Admin API, shared by every thread that queries one shop.

GraphQL's leaky bucket holds points, not requests: a query is charged its *requested* cost up front and
refunded the difference to its *actual* cost. Every answer reports the bucket
(`extensions.cost.throttleStatus {maximumAvailable, currentlyAvailable, restoreRate}`). We keep a model
of it: before a query we wait just long enough for its requested cost to be available, then reserve it;
each answer corrects the model. So queries run at the restore rate's ceiling and THROTTLED is rare.

Readings are not trusted blindly, as with the REST pacer: nonsense (negative, infinite, a bucket above
1 000 000 points) is ignored, and no single pause is longer than the bucket takes to fill from empty.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shopify_pipeline.shopify.pacer import pause_unlocked

SINGLE_QUERY_MAX_COST = 1000  # Shopify refuses a query whose requested cost is above this
MAX_BUCKET_POINTS = 1_000_000  # far above any plan (Enterprise: 40 000): a larger one is a broken reading
MIN_RESTORE_PER_SECOND = 1.0


@dataclass(frozen=True)
class CostReading:
    """One answer's `extensions.cost`."""

    requested: float
    actual: float | None
    maximum: float
    available: float
    restore_per_second: float

    @classmethod
    def of(cls, extensions: Mapping | None) -> CostReading | None:
        """The reading in a GraphQL answer's `extensions`, or None when it is missing or makes no sense."""
        cost = (extensions or {}).get("cost") if isinstance(extensions, Mapping) else None
        status = cost.get("throttleStatus") if isinstance(cost, Mapping) else None
        if not isinstance(status, Mapping):
            return None
        try:
            reading = cls(
                requested=float(cost.get("requestedQueryCost") or 0),
                actual=None if cost.get("actualQueryCost") is None else float(cost["actualQueryCost"]),
                maximum=float(status["maximumAvailable"]),
                available=float(status["currentlyAvailable"]),
                restore_per_second=float(status["restoreRate"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        numbers = (reading.requested, reading.maximum, reading.available, reading.restore_per_second)
        if not all(math.isfinite(n) and n >= 0 for n in numbers):
            return None
        if not 1 <= reading.maximum <= MAX_BUCKET_POINTS or reading.restore_per_second <= 0:
            return None
        return reading


class CostPacer:
    """A local model of one shop's GraphQL cost bucket (points restore at `restore_per_second`)."""

    def __init__(
        self,
        maximum: float = 2000.0,
        restore_per_second: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """`sleep` replaces waiting (a fake clock's, in tests); by default a waiting thread sleeps on the
        pacer's readings, so that a fresher reading wakes it to compute its wait again."""
        # Until the first answer: the Standard plan (100 points/s, a bucket of 20 times that).
        self.maximum = maximum
        self.restore_per_second = max(MIN_RESTORE_PER_SECOND, restore_per_second)
        self._available = maximum
        self._clock = clock
        self._sleep = sleep
        self._at = clock()
        self._lock = threading.Lock()
        self._readings = threading.Condition(self._lock)
        self.waited_seconds = 0.0

    def _restore(self, now: float) -> None:
        self._available = min(self.maximum, self._available + (now - self._at) * self.restore_per_second)
        self._at = now

    @property
    def available(self) -> float:
        with self._lock:
            self._restore(self._clock())
            return self._available

    def acquire(self, cost: float) -> float:
        """Wait until `cost` points are available, then reserve them. Returns the seconds waited."""
        started = self._clock()
        with self._lock:
            while True:
                now = self._clock()
                self._restore(now)
                needed = min(cost, self.maximum)  # a query dearer than the bucket waits for a full one
                if self._available >= needed - 1e-9:
                    self._available -= needed
                    waited = now - started
                    self.waited_seconds += waited
                    return waited
                pause = (needed - self._available) / self.restore_per_second
                self._pause(max(0.001, min(pause, self.maximum / self.restore_per_second)))

    def _pause(self, seconds: float) -> None:
        """Wait up to `seconds` with the lock released (the caller holds it); a reading ends it early."""
        pause_unlocked(self._readings, self._sleep, seconds)

    def observe(self, reading: CostReading | None, reserved: float = 0.0) -> None:
        """Correct the model from an answer's cost reading (Shopify's count wins: it includes other apps'
        spending and the refund of requested minus actual cost). An answer without a usable reading gives
        back what `acquire` reserved for it: the model must not shrink by a full query on every such answer
        (it would stall, one bucket-refill wait per query), and if Shopify did charge it, its next answer
        or a THROTTLED says so."""
        with self._lock:
            self._restore(self._clock())
            if reading is None:
                self._available = min(self.maximum, self._available + max(0.0, reserved))
            else:
                self.maximum = reading.maximum
                self.restore_per_second = max(MIN_RESTORE_PER_SECOND, reading.restore_per_second)
                self._available = min(reading.available, self.maximum)
            # Threads waiting on an older reading compute their wait again from this one.
            self._readings.notify_all()

    def throttled(self, reading: CostReading | None, requested: float) -> float:
        """Shopify answered THROTTLED: the model had too much. Returns how long to wait before trying again."""
        with self._lock:
            self._restore(self._clock())
            if reading is not None:
                self.maximum = reading.maximum
                self.restore_per_second = max(MIN_RESTORE_PER_SECOND, reading.restore_per_second)
                self._available = min(reading.available, self.maximum)
            else:
                self._available = 0.0
            self._readings.notify_all()
            missing = max(0.0, min(requested, self.maximum) - self._available)
            return min(missing / self.restore_per_second, self.maximum / self.restore_per_second)


def page_size_for(per_item_cost: float, fixed_cost: float, maximum: float, largest: int = 250) -> int:
    """The largest `first` (1..largest) whose requested cost, `fixed_cost + first * per_item_cost`, stays
    within the single-query maximum and the bucket."""
    ceiling = min(SINGLE_QUERY_MAX_COST, maximum)
    if per_item_cost <= 0:
        return largest
    return max(1, min(largest, int((ceiling - fixed_cost) // per_item_cost)))
