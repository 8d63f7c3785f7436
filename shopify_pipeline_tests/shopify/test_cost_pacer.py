"""The GraphQL cost pacer with a clock that moves only when it sleeps (the pacer's clock/sleep seam)."""

import threading

import pytest

from shopify_pipeline.shopify.cost_pacer import CostPacer, CostReading, page_size_for
from shopify_pipeline_tests.support.fake_clock import FakeClock


def _extensions(requested, actual, maximum, available, restore):
    return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                     "throttleStatus": {"maximumAvailable": maximum, "currentlyAvailable": available,
                                        "restoreRate": restore}}}


def test_queries_run_at_the_restore_rate_once_the_bucket_is_spent():
    clock = FakeClock()
    pacer = CostPacer(maximum=2000, restore_per_second=100, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        pacer.acquire(502)  # orders(first: 250) with nested line items: a typical requested cost
    # 2 000 points up front, then 100 points a second: 100 * 502 - 2 000 points take 482 s.
    assert clock.now == pytest.approx((100 * 502 - 2000) / 100, rel=0.01)


def test_an_answer_corrects_the_model_and_refunds_count():
    clock = FakeClock()
    pacer = CostPacer(clock=clock, sleep=clock.sleep)
    pacer.acquire(1000)
    pacer.observe(CostReading.of(_extensions(1000, 120, 2000, 1880, 100)))  # refund of 880 points
    assert pacer.available == pytest.approx(1880)
    pacer.observe(CostReading.of(_extensions(10, 10, 4000, 10, 200)))  # an Advanced plan, nearly empty
    assert pacer.maximum == 4000 and pacer.restore_per_second == 200
    waited = pacer.acquire(410)
    assert waited == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("extensions", [
    None, {}, {"cost": None}, _extensions(1, 1, "inf", 5, 100), _extensions(1, 1, 2000, -5, 100),
    _extensions(1, 1, 2000, 5, 0), _extensions(1, 1, 10**9, 5, 100), _extensions(1, 1, 2000, "nan", 100),
])
def test_a_reading_that_makes_no_sense_is_ignored(extensions):
    assert CostReading.of(extensions) is None


def test_throttled_waits_just_long_enough_and_never_longer_than_a_full_refill():
    clock = FakeClock()
    pacer = CostPacer(clock=clock, sleep=clock.sleep)
    wait = pacer.throttled(CostReading.of(_extensions(502, None, 2000, 102, 100)), 502)
    assert wait == pytest.approx(4.0)
    assert pacer.throttled(None, 10**9) <= 2000 / 100


def test_page_size_keeps_the_requested_cost_under_the_single_query_maximum():
    # orders(first: N) { nodes { … lineItems(first: 10) { … } } }: 2 + N * (1 + 2 + 10)
    first = page_size_for(per_item_cost=13, fixed_cost=2, maximum=2000)
    assert 2 + first * 13 <= 1000 < 2 + (first + 1) * 13
    assert page_size_for(per_item_cost=1, fixed_cost=2, maximum=2000) == 250
    assert page_size_for(per_item_cost=13, fixed_cost=2, maximum=100) == 7  # a tiny bucket


def test_an_answer_without_a_reading_gives_back_its_reservation():
    clock = FakeClock()
    pacer = CostPacer(clock=clock, sleep=clock.sleep)
    for _ in range(10):  # answers that never say what they cost (no extensions, or a nonsense reading)
        pacer.acquire(1000)
        pacer.observe(None, reserved=1000)
    assert clock.sleeps == [] and pacer.available == pytest.approx(2000)


class _ThreadClock(FakeClock):
    """A fake clock that tells when a given thread has read it `times` times."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}
        self.watch: tuple[str, int, threading.Event] | None = None

    def __call__(self) -> float:
        name = threading.current_thread().name
        self.reads[name] = self.reads.get(name, 0) + 1
        if self.watch and self.watch[0] == name and self.reads[name] == self.watch[1]:
            self.watch[2].set()
        return self.now


def test_a_fresher_reading_wakes_a_thread_that_waits_on_an_older_one():
    clock = _ThreadClock()
    pacer = CostPacer(clock=clock)  # the default wait: on the pacer's readings, not a plain sleep
    # An old reading: the bucket empty and restoring 1 point a second, so 1 000 points are 1 000 s away.
    pacer.observe(CostReading.of(_extensions(1000, 1000, 2000, 0, 1)))
    computed = threading.Event()
    clock.watch = ("query", 2, computed)  # acquire reads the clock once on entry, then once per computation
    result = {}
    query = threading.Thread(target=lambda: result.setdefault("waited", pacer.acquire(1000)), name="query", daemon=True)
    query.start()
    assert computed.wait(10)
    # acquire holds the pacer's lock from that reading of the clock until it waits, so this reading (another
    # thread's answer: the points are back) lands while it waits, and must wake it to compute again.
    pacer.observe(CostReading.of(_extensions(10, 10, 2000, 2000, 100)))
    query.join(30)  # a guard against a hang only: with a fake clock, a thread that is not woken waits 1 000 s
    assert not query.is_alive()
    assert result["waited"] == 0.0 and clock.reads["query"] == 3  # woken once, no time passed
    assert pacer.available == pytest.approx(1000)
