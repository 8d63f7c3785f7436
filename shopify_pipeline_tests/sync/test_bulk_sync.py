"""Full syncs through one bulk operation (GraphQL connections above the bulk threshold), end to end: the
simulator's bulk lifecycle over HTTP, DynamoDB Local, and stored documents equal to the simulator's own."""

from __future__ import annotations

import threading

import pytest

from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.shopify.bulk import BulkOperations
from shopify_pipeline.shopify.client import ShopifyClient
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.shopify.sources import bulk_listing_query
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.simulator.config import BulkConfig, BulkFaults
from shopify_pipeline.sync.bulk_fetch import MAX_OPERATIONS
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
    narrow = ShopConfig("narrow", "shpat_narrow", orders=120, products=5, customers=5, seed=18, plan="plus",
                        bulk=BulkConfig(concurrency=1))  # one bulk query at a time, as before API 2026-01
    with Simulator([shop, narrow], time_scale=50) as running:
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


def _queries(sim, since: int) -> list[str]:
    return [operation["query"] for operation in sim.bulk_operations("bulky")[since:]]


@pytest.mark.parametrize("faults", [
    BulkFaults(null_url=True, times=1),
    BulkFaults(fail="INTERNAL_SERVER_ERROR", times=1),
], ids=["completed-without-url", "failed-without-partial-data"])
def test_an_operation_that_ends_short_with_nothing_read_is_followed_by_one_that_exports_it_all(service, sim,
                                                                                              faults):
    sim.set_bulk_faults("bulky", faults)
    before = _operations(sim)
    messages = []
    result = service.sync("bulk-user", "manual", data_types=("orders",), progress=messages.append)
    assert result.success, result
    assert _queries(sim, before) == [bulk_listing_query("orders")] * 2
    assert any("a new bulk operation exports them all again" in m for m in messages), messages
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert result.data_types["orders"].records == 600


def test_a_failed_operation_gives_its_partial_data_and_the_next_exports_only_the_rest(service, sim):
    sim.set_bulk_faults("bulky", BulkFaults(fail="INTERNAL_SERVER_ERROR", fail_at=0.5, partial_data=True, times=1))
    before = _operations(sim)
    messages = []
    result = service.sync("bulk-user", "manual", data_types=("orders",), progress=messages.append)
    assert result.success, result
    first, second = sim.bulk_operations("bulky")[before:]
    assert first["status"] == "FAILED" and first["partialDataUrl"]
    # The second operation asks only for the orders after the last whole one the partial file held.
    last_kept = int(second["query"].split("id:>")[1].split('"')[0])
    assert second["query"] == bulk_listing_query("orders", {"id_after": last_kept})
    assert 0 < int(second["rootObjectCount"]) < 600
    assert any("are kept and a new bulk operation exports those after" in m for m in messages), messages
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert result.data_types["orders"].records == 600  # the held-back last record was not counted twice


def test_a_partial_result_with_a_gap_is_not_continued_after_its_last_record_but_exported_again(service, sim,
                                                                                               monkeypatch, caplog):
    # Shopify promises no order in a bulk file: staged records that skip one (ids still ascending) must not be
    # taken for "everything up to the last one".
    from shopify_pipeline.sync import bulk_fetch

    real_stage = bulk_fetch.BulkFetch._stage
    skipped = []

    def stage_without_one(self, batch, resume):
        if not skipped:
            skipped.append(batch.pop(3)["id"])
        real_stage(self, batch, resume)

    monkeypatch.setattr(bulk_fetch.BulkFetch, "_stage", stage_without_one)
    sim.set_bulk_faults("bulky", BulkFaults(fail="INTERNAL_SERVER_ERROR", fail_at=0.5, partial_data=True, times=1))
    before = _operations(sim)
    result = service.sync("bulk-user", "manual", data_types=("orders",))
    assert result.success, result
    assert skipped and "not in id order, so the export starts over" in caplog.text
    assert _queries(sim, before) == [bulk_listing_query("orders")] * 2  # everything again, not "id:>"
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert result.data_types["orders"].records == 600


def test_a_result_url_that_expires_mid_read_is_continued_by_a_new_operation(service, sim, monkeypatch):
    from shopify_pipeline.sync import bulk_fetch

    original = bulk_fetch.BulkFetch._stage
    calls = {"n": 0}

    def stage_then_expire(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            sim.expire_bulk_urls("bulky")  # Shopify keeps a result 7 days; this sync took longer

    monkeypatch.setattr(bulk_fetch.BulkFetch, "_stage", stage_then_expire)
    # The file (1.5 MB) drops once after 1 MB, past the first staged page: the Range request that resumes it
    # finds the URL expired.
    sim.set_bulk_faults("bulky", BulkFaults(drop_download_after_bytes=1_000_000, drop_download_times=1, times=1))
    before = _operations(sim)
    result = service.sync("bulk-user", "initial", data_types=("orders",))
    assert result.success, result
    queries = _queries(sim, before)
    assert len(queries) == 2 and "id:>" in queries[1], queries
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")


@pytest.mark.parametrize("faults", [
    BulkFaults(null_url=True),
    BulkFaults(fail="TIMEOUT"),
], ids=["completed-without-url", "timeout"])
def test_operations_that_keep_ending_short_fall_back_to_pages_and_lose_nothing(service, sim, faults, caplog):
    sim.set_bulk_faults("bulky", faults)
    before = _operations(sim)
    messages = []
    result = service.sync("bulk-user", "manual", data_types=("orders",), progress=messages.append)
    assert result.success, result
    assert _operations(sim) - before == MAX_OPERATIONS
    # Said, not hidden: the progress line and the log tell why, then the pages are fetched.
    assert any("gave no whole result" in m and "fetching by pages instead" in m for m in messages), messages
    assert "fetching by pages instead" in caplog.text
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert service.load_checkpoint("bulk-user", "manual") == {}


def test_an_operation_stuck_past_the_limit_is_cancelled_and_the_type_is_paged(settings, sim):
    sim.set_bulk_faults("bulky", BulkFaults(stuck=True, times=1))
    options = SyncOptions(slices=2, min_records_to_slice=100, bulk_threshold=50, bulk_poll=(0.05, 0.2, 1.5))
    service = SyncService(SyncEngine(settings, FAST_SHOPIFY, options))
    service.add_connection("stuck-user", sim.shop_url("bulky"), "literal:shpat_bulky")
    before = _operations(sim)
    result = service.sync("stuck-user", "initial", data_types=("customers",))
    assert result.success, result
    (stuck,) = sim.bulk_operations("bulky")[before:]
    assert stuck["status"] in ("CANCELING", "CANCELED")  # it no longer holds one of the shop's slots
    assert stored(service, "stuck-user", "customers") == graphql_truth(sim, "bulky", "customers")


def _client_of(sim, shop: str) -> tuple[BulkOperations, ShopifyClient]:
    client = ShopifyClient(sim.shop_url(shop), f"shpat_{shop}", FAST_SHOPIFY)
    return BulkOperations(GraphQLClient(client)), client


def test_a_leftover_export_of_ours_is_cancelled_and_the_one_a_stopped_run_started_is_adopted(service, sim,
                                                                                                monkeypatch):
    operations, client = _client_of(sim, "bulky")
    # An older run left an export of orders running (another search), and no checkpoint holds it.
    sim.set_bulk_faults("bulky", BulkFaults(stuck=True, times=1))
    superseded = operations.start(bulk_listing_query("orders", {"id_after": 1}), group_objects=True)
    client.close()
    sim.set_bulk_faults("bulky", BulkFaults())
    real_start = BulkOperations.start

    def start_then_die(self, query, group_objects=False):
        real_start(self, query, group_objects)
        raise RuntimeError("killed after Shopify created the operation, before its id was saved")

    monkeypatch.setattr(BulkOperations, "start", start_then_die)
    before = _operations(sim)
    assert not service.sync("bulk-user", "initial", data_types=("orders",)).success
    assert service.load_checkpoint("bulk-user", "initial")["orders"]["bulk"]["operation"] is None
    monkeypatch.setattr(BulkOperations, "start", real_start)
    result = service.sync("bulk-user", data_types=("orders",))
    assert result.success, result
    assert _operations(sim) == before + 1  # the rerun adopted the operation the stopped run had started
    assert sim.bulk_operations("bulky")[-1]["status"] == "COMPLETED"
    by_id = {operation["id"]: operation for operation in sim.bulk_operations("bulky")}
    assert by_id[superseded.id]["status"] in ("CANCELING", "CANCELED")
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")


def test_a_shop_with_no_free_bulk_slot_is_waited_on_not_failed(settings, sim):
    operations, client = _client_of(sim, "narrow")
    sim.set_bulk_faults("narrow", BulkFaults(stuck=True, times=1))
    foreign = operations.start("{ customers { edges { node { id } } } }")  # not ours: never cancelled by us
    releaser = threading.Timer(1.0, operations.cancel, (foreign.id,))
    releaser.start()
    service = SyncService(SyncEngine(settings, FAST_SHOPIFY, BULK))
    service.add_connection("narrow-user", sim.shop_url("narrow"), "literal:shpat_narrow")
    messages = []
    try:
        result = service.sync("narrow-user", "initial", data_types=("orders",), progress=messages.append)
    finally:
        releaser.join()
        client.close()
    assert result.success, result
    assert any("Waiting for a free bulk operation slot" in m for m in messages), messages
    assert len(sim.bulk_operations("narrow")) == 2
    assert stored(service, "narrow-user", "orders") == graphql_truth(sim, "narrow", "orders")


def test_a_shop_whose_slots_stay_busy_fails_the_step_as_transient(settings, sim):
    operations, client = _client_of(sim, "narrow")
    sim.set_bulk_faults("narrow", BulkFaults(stuck=True, times=1))
    foreign = operations.start("{ products { edges { node { id } } } }")
    options = SyncOptions(bulk_threshold=50, bulk_poll=(0.05, 0.2, 60.0), bulk_slot_wait=0.5)
    service = SyncService(SyncEngine(settings, FAST_SHOPIFY, options))
    service.add_connection("busy-user", sim.shop_url("narrow"), "literal:shpat_narrow")
    try:
        result = service.sync("busy-user", "initial", data_types=("orders",))
    finally:
        operations.cancel(foreign.id)
        client.close()
    assert not result.success
    status = service.get_sync_status("busy-user")["dataTypes"]["orders"]
    assert status["error"] == {"type": "BulkInProgressError", "reason": "bulk_in_progress", "permanent": False}
    assert "already in progress" in status["message"]


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

    original = bulk_fetch.BulkFetch._stage
    calls = {"n": 0}

    def stage_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed after the second staged page")

    monkeypatch.setattr(bulk_fetch.BulkFetch, "_stage", stage_then_crash)
    before = _operations(sim)
    first = service.sync("bulk-user", "initial", data_types=("orders",))
    assert not first.success
    bulk = service.load_checkpoint("bulk-user", "initial")["orders"]["bulk"]
    assert bulk["pages"] == 2 and bulk["offset"] > 0 and bulk["operation"]
    monkeypatch.setattr(bulk_fetch.BulkFetch, "_stage", original)
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

    real_stage, real_drop = bulk_fetch.BulkFetch._stage, PageStore.drop
    staged = {"n": 0}

    def stage_and_lose_the_rest(self, batch, *args, **kwargs):
        staged["n"] += 1
        if staged["n"] <= 2:
            real_stage(self, batch, *args, **kwargs)  # pages after the second are "lost": the counts will not match

    def drop_fails_once(self, key, first=None, last=None, fence=None):
        if first is not None and first // 1_000_000 == bulk_fetch.BULK_SLICE:
            monkeypatch.setattr(PageStore, "drop", real_drop)
            raise RuntimeError("killed before the bulk pages were dropped")
        return real_drop(self, key, first, last, fence)

    monkeypatch.setattr(bulk_fetch.BulkFetch, "_stage", stage_and_lose_the_rest)
    monkeypatch.setattr(PageStore, "drop", drop_fails_once)
    assert not service.sync("bulk-user", "initial", data_types=("orders",)).success
    bulk = service.load_checkpoint("bulk-user", "initial")["orders"]["bulk"]
    assert bulk["fallback"] and bulk["drop_pending"] and bulk["done"]
    monkeypatch.setattr(bulk_fetch.BulkFetch, "_stage", real_stage)
    result = service.sync("bulk-user", data_types=("orders",))
    assert result.success, result
    assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulky", "orders")
    assert result.data_types["orders"].records == 600  # the two dropped bulk pages were not counted again


def test_the_cli_reads_the_bulk_threshold_and_slot_wait_from_the_environment():
    from shopify_pipeline.settings import SettingsError

    assert SyncOptions.from_env({}).bulk_threshold == SyncOptions.bulk_threshold
    options = SyncOptions.from_env({"SHOPIFY_BULK_THRESHOLD": "none", "SHOPIFY_BULK_SLOT_WAIT_SECONDS": "5"})
    assert (options.bulk_threshold, options.bulk_slot_wait) == (None, 5.0)
    assert SyncOptions.from_env({"SHOPIFY_BULK_THRESHOLD": "50"}).bulk_threshold == 50
    with pytest.raises(SettingsError, match="SHOPIFY_BULK_THRESHOLD"):
        SyncOptions.from_env({"SHOPIFY_BULK_THRESHOLD": "lots"})
