"""The pacer cannot be stalled: tiny buckets make progress, nonsense readings are ignored or clamped."""

import pytest

from shopify_pipeline.shopify.pacer import Pacer
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
