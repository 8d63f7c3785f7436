"""Proactive pacing from Shopify's leaky bucket, shared by every thread that talks to one shop.

Shopify tells us the bucket on every answer (`X-Shopify-Shop-Api-Call-Limit: 32/40`). We model the
bucket locally (level leaks at `leak_per_second`), reserve a slot before each request and wait when
the bucket would overflow, so a sync runs near the plan's ceiling and rarely sees a 429. Each reading
sets the level to Shopify's count plus our requests that it may not include yet, so the model is
corrected in both directions on every answer: a leak rate not learned yet (the default is
the slowest plan's) costs no more than the time between two answers, and the first bucketful is spent
at once, as Shopify allows.

Readings are not trusted blindly: a header that makes no sense (`1000000000/40`, `inf/40`, `41/40`) is
clamped or ignored, the margin never eats the whole of a tiny bucket, and no single pause is longer than
the time the bucket takes to drain, so a broken header can slow a sync but never stall it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_BUCKET = 100_000  # far above any plan (Plus: 400): a larger "size" is a broken header, not a bucket
MIN_LEAK_PER_SECOND = 0.05
# A request unanswered for this long was counted and leaked out long ago, or failed without an answer.
IN_FLIGHT_SECONDS = 60.0


class Pacer:
    """A local model of one shop's leaky bucket."""

    def __init__(
        self,
        leak_per_second: float = 2.0,
        size: int = 40,
        margin: int = 2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """`sleep` replaces waiting (a fake clock's, in tests); by default a waiting thread sleeps on the
        pacer's readings, so that each answer wakes it to compute its wait again."""
        self.leak_per_second = max(MIN_LEAK_PER_SECOND, leak_per_second)
        self.size = size
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._readings = threading.Condition(self._lock)
        self._level = 0.0
        self._at = clock()
        self._in_flight: deque[float] = deque()  # when each request not answered yet was reserved
        # Answers so far, and their number when each thread reserved its request (a thread waits for its
        # answer before it reserves again): what came back meanwhile may have been counted after it.
        self._answers = 0
        self._answers_at_acquire: dict[int, int] = {}
        # An earlier reading (time, used, requests then in flight) and how many answers came since: the leak
        # rate is learned from them, since plans (and a time-scaled simulator) leak at different rates.
        self._reference: tuple[float, float, int] | None = None
        self._answers_since = 0
        self.waited_seconds = 0.0

    def _leak(self, now: float) -> None:
        self._level = max(0.0, self._level - (now - self._at) * self.leak_per_second)
        self._at = now

    def _usable(self) -> float:
        """Requests the bucket may hold: the margin keeps a few free, but never the whole of a tiny bucket."""
        return self.size - min(self.margin, max(0, self.size - 1))

    def acquire(self) -> float:
        """Reserve one request, sleeping until the bucket has room. Returns the seconds waited.

        Every answer must be passed to `observe` (a 429 too, header or not): that is how the pacer knows
        the request is no longer in flight. One that never gets an answer stops counting after a minute."""
        started = self._clock()
        with self._lock:
            while True:
                now = self._clock()
                self._leak(now)
                room = self._usable() - self._level
                if room >= 1 - 1e-9:  # float leak arithmetic must not leave us a hair short forever
                    self._level += 1
                    self._in_flight.append(now)
                    self._answers_at_acquire[threading.get_ident()] = self._answers
                    waited = now - started
                    self.waited_seconds += waited
                    return waited
                # Never longer than a full bucket takes to drain, whatever the model says.
                self._pause(max(0.001, min((1 - room) / self.leak_per_second, self.size / self.leak_per_second)))

    def _pause(self, seconds: float) -> None:
        """Wait up to `seconds` with the lock released (the caller holds it); an answer ends it early."""
        pause_unlocked(self._readings, self._sleep, seconds)

    def _answered(self, now: float) -> int:
        """One request is no longer in flight. Returns how many still are."""
        if self._in_flight:
            self._in_flight.popleft()
        while self._in_flight and self._in_flight[0] < now - IN_FLIGHT_SECONDS:
            self._in_flight.popleft()
        return len(self._in_flight)

    def observe(self, header: str | None) -> None:
        """Count an answer and correct the model from its `X-Shopify-Shop-Api-Call-Limit` ("used/size")."""
        with self._lock:
            now = self._clock()
            self._leak(now)
            in_flight = self._answered(now)
            # Requests Shopify counted after this one were answered since it was reserved, or are in flight.
            overtaken = self._answers - self._answers_at_acquire.pop(threading.get_ident(), self._answers)
            self._answers += 1
            reading = _reading(header)
            if reading is None:
                return  # not a bucket: ignore the reading rather than wait for it
            used, size = reading
            if int(size) != self.size:
                # Every Shopify plan leaks a twentieth of its bucket per second (40/2, 80/4, 400/20):
                # a good first guess until the readings say better.
                self.size = int(size)
                self.leak_per_second = max(self.leak_per_second, self.size / 20)
            self._learn_leak(now, used, in_flight + overtaken)
            # Shopify's count, and our requests it may not include yet: an upper bound of the level (those it
            # does include are counted twice), however wrong the leak rate was.
            self._level = min(float(self.size), used + in_flight + overtaken)
            self._readings.notify_all()  # threads waiting on the old level compute their wait again

    def _learn_leak(self, now: float, used: float, pending: int) -> None:
        """Between two readings Shopify counted one request per answer and leaked the rest. `pending`: our
        requests this reading may not include."""
        self._answers_since += 1
        if self._reference is None:
            self._reference = (now, used, pending)
            self._answers_since = 0
            return
        then, before, pending_before = self._reference
        elapsed = now - then
        if elapsed < 2.0:
            return
        estimate = (before + self._answers_since - used) / elapsed
        # What the window proves even if its count is off by the most it can be (answers of requests counted
        # before it, a header rounded up): taken at once, so that the first readings replace a default far
        # below the real rate without averaging up to it.
        proven = min((before + self._answers_since - used - pending_before - 1) / elapsed, self.size)
        if estimate > 0 and math.isfinite(estimate):
            if used > 1:  # a reading from a non-empty bucket: the estimate is exact up to noise
                learned = max(0.5 * self.leak_per_second + 0.5 * min(estimate, self.size), proven)
            else:  # the bucket may have run dry in between: only the proven rate is a lower bound
                learned = max(self.leak_per_second, proven)
            # Every plan leaks at least a twentieth of its bucket a second: a header that always says
            # "full" must not talk the rate down towards zero (each wait would make the next estimate lower).
            self.leak_per_second = max(learned, self.size / 20, MIN_LEAK_PER_SECOND)
        self._reference = (now, used, pending)
        self._answers_since = 0

    def throttled(self, retry_after: float) -> None:
        """Shopify answered 429: the bucket is full (the client sleeps `retry_after` itself)."""
        with self._lock:
            self._leak(self._clock())
            self._level = max(self._level, float(self._usable()))


def _reading(header: str | None) -> tuple[float, float] | None:
    """(used, size) of a call-limit header, or None when it is not a bucket (`inf/40`, `5/0`, garbage)."""
    if not header or "/" not in header:
        return None
    try:
        used, size = (float(part) for part in header.split("/", 1))
    except ValueError:
        return None
    if not (math.isfinite(used) and math.isfinite(size)) or not 1 <= size <= MAX_BUCKET or used < 0:
        return None
    return min(used, size), size  # "41/40": over the top means full, not a debt to sit out


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


def pause_unlocked(readings: threading.Condition, sleep: Callable[[float], None] | None, seconds: float) -> None:
    """Wait up to `seconds` with `readings`' lock released (the caller holds it): on the condition, which a new
    reading notifies, or with an injected `sleep` (tests' fake clocks)."""
    if sleep is None:
        readings.wait(seconds)
        return
    readings.release()
    try:
        sleep(seconds)
    finally:
        readings.acquire()
