"""The pacer cannot be stalled: tiny buckets make progress, nonsense readings are ignored or clamped."""

import heapq
import math
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from shopify_pipeline.shopify.pacer import IN_FLIGHT_SECONDS, Pacer
from shopify_pipeline_tests.support.fake_clock import FakeClock


@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_bucket_of_one_to_three_requests_makes_progress(size):
    clock = FakeClock()
    pacer = Pacer(leak_per_second=1.0, size=size, margin=2, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        pacer.acquire()
        pacer.observe(f"{size}/{size}")  # Shopify says: full
    # A header that always says "full" slows the pacer to the slowest leak any plan has (a twentieth of
    # the bucket a second), never to a stop: no pause is longer than that rate takes to drain the bucket.
    assert max(clock.sleeps) <= 20.0


@pytest.mark.parametrize("header", ["1000000000/40", "inf/40", "nan/40", "41/40", "-3/40", "40/inf", "5/0",
                                    "40/1000000000", "garbage", "12"])
def test_a_nonsense_call_limit_header_never_makes_a_long_pause(header):
    clock = FakeClock()
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        pacer.acquire()
        pacer.observe(header)
    assert all(pause <= 40 / 2.0 for pause in clock.sleeps)  # at most the time a full bucket drains
    assert pacer.size <= 100_000 and pacer.leak_per_second > 0


class _FakeShop:
    """Shopify's REST bucket on a fake clock, for slices that each keep one request in flight: a request is
    counted `latency` after it is sent (or refused with a 429 when the bucket is full) and answered `render`
    later with the call-limit header. The pacer's sleeps deliver the answers due meanwhile, as a waiting
    thread is woken by another thread's answer. Each slice calls the pacer from its own thread, one call at
    a time, driven in turn by the test's thread: the order of events is the fake clock's, not the OS's."""

    def __init__(self, pacer_clock: FakeClock, size=40, leak=10.0, latency=0.15, render=0.05) -> None:
        self.clock, self.size, self.leak, self.latency, self.render = pacer_clock, size, leak, latency, render
        self.level, self.at = 0.0, 0.0
        self.events: list[tuple[float, int, str, str]] = []
        self.sequence = 0
        self.counted = self.throttled = 0
        self.pacer: Pacer | None = None
        self.ready: list[int] = []
        self.threads: list[ThreadPoolExecutor] = []

    def send(self, slice_number: int) -> None:
        self._push(self.clock.now + self.latency, "count", str(slice_number))

    def _push(self, at: float, kind: str, payload: str) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, payload))

    def step(self, until: float = float("inf")) -> bool:
        """Run events up to `until`, stopping after the first answer. Returns whether an answer came."""
        while self.events and self.events[0][0] <= until:
            at, _, kind, payload = heapq.heappop(self.events)
            self.clock.now = max(self.clock.now, at)
            if kind == "count":
                self.level = max(0.0, self.level - (at - self.at) * self.leak)
                self.at = at
                if self.level + 1 > self.size + 1e-9:
                    self.throttled += 1
                else:
                    self.level += 1
                    self.counted += 1
                self._push(at + self.render, "answer", f"{payload} {math.ceil(self.level - 1e-9)}/{self.size}")
            else:
                slice_number, header = payload.split()
                self.threads[int(slice_number)].submit(self.pacer.observe, header).result()
                self.ready.append(int(slice_number))
                return True
        return False

    def sleep(self, seconds: float) -> None:
        self.clock.sleeps.append(seconds)
        target = self.clock.now + seconds
        if not self.step(target):
            self.clock.now = target

    def fetch(self, pacer: Pacer, requests: int, slices: int) -> float:
        """Send `requests` from `slices` slices through `pacer`. Returns the fake seconds it took."""
        self.pacer, self.ready = pacer, list(range(slices))
        self.threads = [ThreadPoolExecutor(1) for _ in range(slices)]
        sent = 0
        try:
            while sent < requests or self.events:
                if self.ready and sent < requests:
                    slice_number = self.ready.pop(0)
                    self.threads[slice_number].submit(pacer.acquire).result()
                    self.send(slice_number)
                    sent += 1
                else:
                    self.step()
        finally:
            for thread in self.threads:
                thread.shutdown()
        return self.clock.now


@pytest.mark.parametrize("slices", [4, 8])
def test_the_first_bucketful_goes_at_once_and_a_faster_leak_than_the_default_costs_little(slices):
    # The standard plan's bucket (40) leaking 10/s, as a time-scaled simulator does, while the pacer starts
    # from the real plan's 2/s: the best any client can do is 40 requests at once, then 10 a second.
    # (4 slices each 0.2 s a round trip can send 20 a second: the pacer, not the slices, sets the pace.)
    clock = FakeClock()
    shop = _FakeShop(clock)
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=shop.sleep)
    seconds = shop.fetch(pacer, 400, slices)
    ideal = (400 - 40) / 10.0
    assert shop.throttled == 0 and shop.counted == 400
    assert ideal / seconds >= 0.95
    assert pacer.leak_per_second == pytest.approx(10.0, rel=0.2)


def test_a_reading_lowers_the_model_when_the_leak_was_underestimated():
    clock = FakeClock()
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=clock.sleep)
    for _ in range(38):
        pacer.acquire()
    for _ in range(37):
        pacer.observe("3/40")  # Shopify has leaked most of them already; one answer is still to come
    assert pacer.acquire() == 0.0  # 3 counted + 1 in flight: room without waiting


def test_requests_in_flight_count_until_answered_then_expire():
    clock = FakeClock()
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=clock.sleep)
    for _ in range(30):
        pacer.acquire()
    pacer.observe("0/40")  # Shopify has counted none of the 29 others yet: they still take room
    assert [pacer.acquire() for _ in range(9)] == [0.0] * 9  # 29 in flight + 9 = the 38 usable
    assert pacer.acquire() == pytest.approx(0.5)
    clock.now += IN_FLIGHT_SECONDS + 1  # answers that never came (a connection reset) stop counting
    pacer.observe("0/40")
    for _ in range(38):
        assert pacer.acquire() == 0.0


def test_an_answer_without_a_header_is_no_longer_in_flight():
    clock = FakeClock()
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        pacer.acquire()
        pacer.observe(None)  # a 5xx without the header, say
    pacer.observe("0/40")
    for _ in range(38):
        assert pacer.acquire() == 0.0


class _JitteryShop(_FakeShop):
    """The same, with each request's latency and each answer's delay drawn at random: requests are counted,
    and answered, in another order than they were sent."""

    def __init__(self, pacer_clock: FakeClock, rng: random.Random, **bucket) -> None:
        super().__init__(pacer_clock, **bucket)
        self.rng = rng

    def send(self, slice_number: int) -> None:
        self._push(self.clock.now + self.rng.uniform(0.02, 0.3), "count", str(slice_number))

    def _push(self, at: float, kind: str, payload: str) -> None:
        if kind == "answer":
            at += self.rng.uniform(0.005, 0.2) - self.render
        super()._push(at, kind, payload)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("size", "leak"), [(40, 2.0), (40, 10.0), (400, 20.0)])
@pytest.mark.parametrize("slices", [4, 16])
def test_concurrent_slices_never_overflow_the_bucket_even_when_answers_overtake_each_other(seed, size, leak, slices):
    clock = FakeClock()
    shop = _JitteryShop(clock, random.Random(seed), size=size, leak=leak)
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=shop.sleep)
    shop.fetch(pacer, 300, slices)
    assert shop.throttled == 0 and shop.counted == 300


def test_answers_of_requests_counted_before_a_window_do_not_teach_a_faster_leak():
    clock = FakeClock()
    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=clock, sleep=clock.sleep)
    for _ in range(16):  # 16 requests at once, all counted by Shopify at once
        pacer.acquire()
    pacer.observe("16/40")  # the first answer; 15 are still in flight
    clock.now = 2.0
    for _ in range(15):  # answered 2 s later: the bucket has leaked the 16 at 8 a second (or faster)
        pacer.observe("0/40")
    # Counting those 15 answers as requests of the window would make it 31 leaked in 2 s (15.5/s).
    assert 2.0 <= pacer.leak_per_second <= 8.0
