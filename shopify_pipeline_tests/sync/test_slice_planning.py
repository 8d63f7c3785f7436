"""Slices planned from the data (issue #16): one slice for a small shop or a tight bucket, cuts by counts for
a big shop, never an empty slice, nothing lost."""

import math
import threading
from bisect import bisect_right
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from shopify_pipeline.dynamo.codec import GRAPHQL, REST
from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions, _balanced_bounds
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, source_of_truth, stored

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


class Counter:
    """count_up_to over a list of creation moments, counting the requests it answers."""

    def __init__(self, moments: list[datetime]) -> None:
        self.moments = sorted(moments)
        self.requests = 0

    def __call__(self, moment: datetime) -> int:
        self.requests += 1
        return bisect_right(self.moments, moment)

    def slices(self, bounds: list[datetime]) -> list[int]:
        """Records in each slice the bounds make (inclusive to the second, as created_at_min/max)."""
        edges = [bisect_right(self.moments, bound) for bound in bounds]
        return [b - a for a, b in zip([0, *edges], [*edges, len(self.moments)], strict=True)]


def _plan(moments: list[datetime], parts: int, budget: int) -> tuple[list[int], Counter]:
    counter = Counter(moments)
    bounds = _balanced_bounds(counter, counter.moments[0], NOW, len(moments), parts, budget)
    assert bounds == sorted(bounds) and all(bound.microsecond == 0 for bound in bounds)
    return counter.slices(bounds), counter


def test_evenly_spread_records_are_cut_into_equal_counts_in_one_round():
    moments = [NOW - timedelta(seconds=400 * i) for i in range(40_000)]  # ~6 months, evenly
    sizes, counter = _plan(moments, 4, 12)
    assert len(sizes) == 4 and sum(sizes) == 40_000
    assert all(abs(size - 10_000) <= 2_500 for size in sizes), sizes
    assert counter.requests == 3  # the first round's interpolation is right: no second round


def test_a_recent_cluster_is_found_and_no_slice_is_empty():
    # One order ten years old, 9 999 in the last three days: equal time slices would be 3 empty and 1 full.
    moments = [NOW - timedelta(days=3650)] + [NOW - timedelta(seconds=26 * i) for i in range(9_999)]
    sizes, counter = _plan(moments, 4, 12)
    assert counter.requests <= 12
    assert sum(sizes) == 10_000 and all(sizes), sizes
    assert max(sizes) <= 10_000 / 2, sizes  # balanced enough that the parallel slices share the work


def test_a_tight_budget_plans_fewer_slices_rather_than_empty_ones():
    moments = [NOW - timedelta(days=3650)] + [NOW - timedelta(seconds=26 * i) for i in range(9_999)]
    sizes, counter = _plan(moments, 4, 3)
    assert counter.requests <= 3 and sum(sizes) == 10_000 and all(sizes), sizes


def test_a_rounds_count_requests_are_sent_at_once_and_cut_the_same():
    # Three cuts, one round: with 3 workers the three requests are in flight together (each waits at a
    # barrier for the other two; sent one after another, the first would wait alone and break it).
    moments = [NOW - timedelta(seconds=400 * i) for i in range(40_000)]
    together = threading.Barrier(3, timeout=10)
    counter = Counter(moments)

    def count_up_to(moment: datetime) -> int:
        together.wait()
        return counter(moment)

    at_once = _balanced_bounds(count_up_to, counter.moments[0], NOW, len(moments), 4, 12, workers=3)
    one_by_one = _balanced_bounds(Counter(moments), counter.moments[0], NOW, len(moments), 4, 12)
    assert at_once == one_by_one and len(at_once) == 3 and counter.requests == 3


def test_records_all_in_one_second_make_one_slice():
    sizes, _ = _plan([NOW - timedelta(days=2)] * 5_000, 4, 12)
    assert sizes == [5_000]


# Against the simulator -------------------------------------------------------------------------------

TIGHT = ShopConfig("tight", "shpat_tight", orders=1, history_days=3650, seed=31, rest_bucket_size=3,
                   rest_leak_per_second=1.0)
BIG = ShopConfig("big", "shpat_big", orders=2000, history_days=400, seed=32, plan="plus")


@pytest.fixture(scope="module")
def sim():
    with Simulator([TIGHT, BIG], time_scale=10) as running:
        # The tight shop's orders cluster: one ten years old, 999 created now.
        running.create_records("tight", "orders", n=999, seed=3)
        yield running


def _service(settings, sim, shop: str, api: str, **shopify) -> SyncService:
    engine = SyncEngine(settings, replace(FAST_SHOPIFY, **shopify), SyncOptions())
    service = SyncService(engine)
    service.add_connection(f"user-{shop}", sim.shop_url(shop), f"literal:shpat_{shop}", api=api)
    return service


def test_a_clustered_1000_order_shop_on_a_tight_bucket_takes_pages_plus_two_requests(settings, sim):
    # A 3-request bucket leaking 1/s (10/s at time_scale 10), and a 503 every third request.
    sim.set_faults("tight", FaultConfig(rules=(FaultRule("503", every=3, times=0),)))
    before = sim.stats("tight")
    service = _service(settings, sim, "tight", REST)
    result = service.initial_sync("user-tight", data_types=("orders",))
    assert result.success, result
    after = sim.stats("tight")
    made = after["total_requests"] - before["total_requests"]
    failed = (after["faults_served"].get("503", 0) - before["faults_served"].get("503", 0)
              + after["throttled"] - before["throttled"])
    pages = math.ceil(1000 / 250)
    assert failed >= 1, "the 503s were served"
    # Scopes and the pages: the scopes' answer shows the bucket, too tight for parallel slices, so no count, no
    # probe of the oldest order, no slice boundary, no empty slice.
    assert made - failed <= pages + 2, after["requests"]
    assert after["requests"].get("orders/count", 0) == before["requests"].get("orders/count", 0)
    assert after["requests"].get("orders", 0) - before["requests"].get("orders", 0) <= pages + failed
    assert stored(service, "user-tight", "orders") == source_of_truth(sim, "tight", "orders")


@pytest.mark.parametrize("api", [REST, GRAPHQL])
def test_a_big_shop_is_sliced_by_counts_and_keeps_orders_created_during_the_sync(settings, sim, api):
    service = _service(settings, sim, "big", api, page_size=100)
    created: list[int] = []

    def create_once(message: str) -> None:  # after the first staged page: every slice is still running
        if not created and message.startswith("Fetching page"):
            created.extend(sim.create_records("big", "orders", n=5, seed=len(message)))

    fetched = service.engine.fetch("user-big", "initial", "orders", progress=create_once)
    assert fetched.complete and created
    slices = service.engine.state.load_checkpoint("user-big", "initial", "orders").state["slices"]
    assert len(slices) == 4 and all(piece["records"] > 0 for piece in slices), slices
    assert slices[0]["min"] is None and slices[-1]["max"] is None
    for earlier, later in zip(slices, slices[1:], strict=False):
        end = datetime.fromisoformat(earlier["max"].replace("Z", "+00:00"))
        assert later["min"] == (end + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sizes = [piece["records"] for piece in slices]
    assert max(sizes) <= 2 * min(sizes), sizes  # by counts, not by equal time
    assert service.engine.load("user-big", "initial", "orders").finished
    truth = source_of_truth(sim, "big", "orders") if api == REST else graphql_truth(sim, "big", "orders")
    assert set(created) <= set(truth)
    assert stored(service, "user-big", "orders") == truth
