"""The sync engine end to end: the simulator (HTTP) → staged pages → DynamoDB Local."""

import logging

import pytest

from shopify_pipeline.exact_json import dumps_json
from shopify_pipeline.shopify.errors import InvalidTokenError, ShopFrozenError
from shopify_pipeline.simulator import FaultConfig, FaultRule
from shopify_pipeline_tests.sync.conftest import source_of_truth, stored


def test_initial_sync_copies_every_record_exactly(service, sim):
    result = service.initial_sync("user-acme")
    assert result.success, result
    for data_type in ("orders", "products", "customers"):
        assert stored(service, "user-acme", data_type) == source_of_truth(sim, "acme", data_type)
    orders = stored(service, "user-acme", "orders")
    assert max(orders) > 2**53
    biggest = max(len(dumps_json(o)) for o in orders.values())
    assert biggest > 400 * 1024, f"an order over DynamoDB's item limit is synced too ({biggest} bytes)"
    assert {o["financial_status"] for o in orders.values()} >= {"paid"}
    assert any(o.get("cancelled_at") for o in orders.values()), "cancelled orders are synced too"
    assert result.data_types["orders"].pages >= 5  # 1 200 orders in 4 slices
    status = service.get_sync_status("user-acme")
    assert status["status"] == "completed"
    assert service.load_checkpoint("user-acme", "initial") == {}, "a finished sync leaves no checkpoint"


def test_a_second_sync_changes_and_duplicates_nothing(service, sim):
    service.initial_sync("user-small")
    first = stored(service, "user-small", "orders")
    again = service.manual_sync("user-small")
    assert again.success
    assert stored(service, "user-small", "orders") == first == source_of_truth(sim, "small", "orders")


def test_daily_sync_fetches_only_what_changed_and_removes_deleted_records(service, sim):
    service.initial_sync("user-acme", data_types=("orders",))
    changed = sim.update_records("acme", "orders", n=7, seed=5) + sim.create_records("acme", "orders", n=3)
    deleted = sim.delete_records("acme", "orders", n=2, seed=9)
    before = sim.stats("acme")["requests"]
    result = service.daily_sync("user-acme", data_types=("orders",))
    used = sim.stats("acme")["requests"]
    assert result.success and result.data_types["orders"].deleted == 2
    # The changed records, plus whatever else changed within the lookback window before the mark.
    assert len(set(changed)) <= result.data_types["orders"].records < 250
    made = {endpoint: count - before.get(endpoint, 0) for endpoint, count in used.items()}
    assert made.get("orders") == 1 and sum(made.values()) <= 2, made  # one page + one page of deletions
    now = stored(service, "user-acme", "orders")
    assert now == source_of_truth(sim, "acme", "orders") and not set(deleted) & set(now)


def test_timeouts_then_success_on_page_5(service, sim):
    rule = FaultRule("hang", endpoint="orders", page=5, times=2)
    sim.set_faults("acme", FaultConfig(hang_seconds=3, rules=(rule,)))
    service.engine.options = type(service.engine.options)(slices=1)
    result = service.initial_sync("user-acme", data_types=("orders",))
    assert result.success and result.data_types["orders"].retries >= 2
    assert stored(service, "user-acme", "orders") == source_of_truth(sim, "acme", "orders")


def test_a_page_failing_after_retries_is_recorded_and_only_it_is_fetched_again(service, sim):
    sim.set_faults("acme", FaultConfig(rules=(FaultRule("502", endpoint="orders", page=2, times=0),)))
    first = service.initial_sync("user-acme", data_types=("orders",))
    assert not first.success and len(first.data_types["orders"].failed_pages) >= 1
    status = service.get_sync_status("user-acme")["dataTypes"]["orders"]
    assert status["status"] == "failed" and status["failedPages"] >= 1
    fetched_before = first.data_types["orders"].pages
    sim.set_faults("acme", FaultConfig())
    second = service.initial_sync("user-acme", data_types=("orders",))
    assert second.success
    assert second.data_types["orders"].pages_fetched_this_run == second.data_types["orders"].pages - fetched_before
    assert stored(service, "user-acme", "orders") == source_of_truth(sim, "acme", "orders")


def test_permanent_errors_fail_with_a_reason_and_keep_the_token_out_of_logs(service, sim, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BAD_TOKEN", "shpat_revoked")
    monkeypatch.setenv("FROZEN_TOKEN", "shpat_frozen")
    service.add_connection("user-badtoken", sim.shop_url("acme"), "env:BAD_TOKEN")
    service.add_connection("user-frozen-env", sim.shop_url("frozen"), "env:FROZEN_TOKEN")
    result = service.initial_sync("user-badtoken")
    assert not result.success and "rejected the access token" in result.data_types["orders"].error
    status = service.get_sync_status("user-badtoken")
    assert status["status"] == "failed"
    assert status["dataTypes"]["orders"]["error"]["reason"] == "invalid_token"
    with pytest.raises(ShopFrozenError):
        service.engine.fetch("user-frozen-env", "initial", "orders")
    with pytest.raises(InvalidTokenError):
        service.engine.fetch("user-badtoken", "initial", "products")
    logged = caplog.text + str(status)
    assert "shpat_revoked" not in logged and "shpat_frozen" not in logged


def test_without_read_all_orders_the_60_day_limit_is_reported(service):
    result = service.initial_sync("user-recent", data_types=("orders",))
    assert result.success
    # The fetch noted it in the checkpoint while running; the finished status says nothing failed.
    assert service.engine.shopify_client(service.engine.connections.get("user-recent")).granted_scopes() == {
        "read_orders", "read_products", "read_customers"}
