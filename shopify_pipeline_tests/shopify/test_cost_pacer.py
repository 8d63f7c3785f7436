"""The GraphQL cost pacer with a clock that moves only when it sleeps (the pacer's clock/sleep seam)."""

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
