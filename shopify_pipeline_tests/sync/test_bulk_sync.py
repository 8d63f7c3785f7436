"""Full syncs through one bulk operation (GraphQL connections above the bulk threshold), end to end: the
simulator's bulk lifecycle over HTTP, DynamoDB Local, and stored documents equal to the simulator's own."""

from __future__ import annotations

import pytest

from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.simulator.config import BulkFaults
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, stored

BULK = SyncOptions(slices=2, min_records_to_slice=100, bulk_threshold=50, bulk_poll=(0.05, 0.2, 60.0))


@pytest.fixture(scope="module")
def sim():
    shop = ShopConfig("bulky", "shpat_bulky", orders=600, products=60, customers=80, seed=17, plan="plus",
                      large_order_every=200, large_order_line_items=400, large_product_every=20,
                      large_product_variants=300)
    with Simulator([shop], time_scale=50) as running:
        yield running


@pytest.fixture
def service(settings, sim):
    sim.set_bulk_faults("bulky", BulkFaults())
    svc = SyncService(SyncEngine(settings, FAST_SHOPIFY, BULK))
    svc.add_connection("bulk-user", sim.shop_url("bulky"), "literal:shpat_bulky")
    return svc


def _operations(sim) -> int:
    return len(sim.bulk_operations("bulky"))


def test_an_initial_sync_exports_each_data_type_with_one_bulk_operation(service, sim):
    before = _operations(sim)
    listing_requests = sim.stats("bulky")["requests"].get("graphql", 0)
    result = service.sync("bulk-user", "initial")
    assert result.success, result
    for data_type in DATA_TYPES:
        assert stored(service, "bulk-user", data_type) == graphql_truth(sim, "bulky", data_type)
    assert _operations(sim) - before == 3  # one per data type, none started twice
    # Planning (scopes, counts), starting, polling: a few dozen queries, not 600 / 18 pages of orders.
    assert sim.stats("bulky")["requests"]["graphql"] - listing_requests < 100
    status = service.get_sync_status("bulk-user")["dataTypes"]["orders"]
    assert status["status"] == "completed" and status["recordCount"] == 600


@pytest.mark.parametrize("faults", [
    BulkFaults(null_url=True),
    BulkFaults(fail="INTERNAL_SERVER_ERROR", partial_data=True),
    BulkFaults(fail="TIMEOUT"),
], ids=["completed-without-url", "failed-with-partial-data", "timeout"])
def test_a_bulk_export_without_a_whole_result_falls_back_to_pages_and_loses_nothing(service, sim, faults,
                                                                                      caplog):
    sim.set_bulk_faults("bulky", faults)
    before = _operations(sim)
    messages = []
    result = service.sync("bulk-user", "manual", data_types=("orders",), progress=messages.append)
    assert result.success, result
    assert _operations(sim) - before == 1
    # Said, not hidden: the progress line and the log tell why, then the pages are fetched.
    assert any("gave no whole result" in m and "fetching by pages instead" in m for m in messages), messages
    assert "fetching by pages instead" in caplog.text
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert service.load_checkpoint("bulk-user", "manual") == {}


def test_access_denied_on_a_bulk_export_is_permanent(service, sim):
    sim.set_bulk_faults("bulky", BulkFaults(fail="ACCESS_DENIED"))
    result = service.sync("bulk-user", "initial", data_types=("customers",))
    assert not result.success and "ACCESS_DENIED" in result.data_types["customers"].error
    assert service.get_sync_status("bulk-user")["dataTypes"]["customers"]["error"]["permanent"] is True


def test_a_download_that_drops_resumes_with_range(service, sim):
    sim.set_bulk_faults("bulky", BulkFaults(drop_download_after_bytes=40_000, drop_download_times=2))
    result = service.sync("bulk-user", "initial", data_types=("orders",))
    assert result.success
    assert sim.stats("bulky")["faults_served"].get("bulk_drop", 0) >= 2
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")


def test_a_run_stopped_mid_read_resumes_from_its_offset_with_the_same_operation(service, sim, monkeypatch):
    from shopify_pipeline.sync import bulk_fetch

    original = bulk_fetch._stage
    calls = {"n": 0}

    def stage_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed after the second staged page")

    monkeypatch.setattr(bulk_fetch, "_stage", stage_then_crash)
    before = _operations(sim)
    first = service.sync("bulk-user", "initial", data_types=("orders",))
    assert not first.success
    bulk = service.load_checkpoint("bulk-user", "initial")["orders"]["bulk"]
    assert bulk["pages"] == 2 and bulk["offset"] > 0 and bulk["operation"]
    monkeypatch.setattr(bulk_fetch, "_stage", original)
    second = service.sync("bulk-user", data_types=("orders",))
    assert second.success and second.data_types["orders"].sync_type == "initial"
    assert _operations(sim) - before == 1  # the rerun polled the same operation and read on from its offset
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")


def test_small_shops_and_daily_syncs_page_as_before(settings, sim):
    service = SyncService(SyncEngine(settings, FAST_SHOPIFY, SyncOptions(bulk_threshold=10_000)))
    service.add_connection("small-user", sim.shop_url("bulky"), "literal:shpat_bulky")
    before = _operations(sim)
    assert service.sync("small-user", "initial", data_types=("customers",)).success
    assert service.sync("small-user", data_types=("customers",)).data_types["customers"].sync_type == "daily"
    assert _operations(sim) == before


def test_after_access_denied_is_fixed_the_rerun_starts_a_new_operation(service, sim):
    sim.set_bulk_faults("bulky", BulkFaults(fail="ACCESS_DENIED", times=1))
    assert not service.sync("bulk-user", "initial", data_types=("customers",)).success
    assert service.load_checkpoint("bulk-user", "initial")["customers"]["bulk"]["operation"] is None
    # The merchant granted the scope: the next run does not poll the failed operation again.
    result = service.sync("bulk-user", data_types=("customers",))
    assert result.success, result
    assert stored(service, "bulk-user", "customers") == graphql_truth(sim, "bulky", "customers")


def test_a_fallback_stopped_before_dropping_the_bulk_pages_drops_them_next_time(service, sim, monkeypatch):
    # The export is read (two pages staged), then its count check fails; the run stops before the drop.
    sim.set_bulk_faults("bulky", BulkFaults())
    from shopify_pipeline.dynamo.pages import PageStore
    from shopify_pipeline.sync import bulk_fetch

    real_stage, real_drop = bulk_fetch._stage, PageStore.drop
    staged = {"n": 0}

    def stage_and_lose_the_rest(batch, *args, **kwargs):
        staged["n"] += 1
        if staged["n"] <= 2:
            real_stage(batch, *args, **kwargs)  # pages after the second are "lost": the counts will not match

    def drop_fails_once(self, key, first=None, last=None, fence=None):
        if first is not None and first // 1_000_000 == bulk_fetch.BULK_SLICE:
            monkeypatch.setattr(PageStore, "drop", real_drop)
            raise RuntimeError("killed before the bulk pages were dropped")
        return real_drop(self, key, first, last, fence)

    monkeypatch.setattr(bulk_fetch, "_stage", stage_and_lose_the_rest)
    monkeypatch.setattr(PageStore, "drop", drop_fails_once)
    assert not service.sync("bulk-user", "initial", data_types=("orders",)).success
    bulk = service.load_checkpoint("bulk-user", "initial")["orders"]["bulk"]
    assert bulk["fallback"] and bulk["drop_pending"] and bulk["done"]
    monkeypatch.setattr(bulk_fetch, "_stage", real_stage)
    result = service.sync("bulk-user", data_types=("orders",))
    assert result.success, result
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert result.data_types["orders"].records == 600  # the two dropped bulk pages were not counted again
