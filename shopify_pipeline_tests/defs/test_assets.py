"""Materializing user partitions with a real Dagster instance, DynamoDB Local and the simulator."""

import base64
import hashlib
import hmac
import json
import uuid
import warnings

import dagster as dg
import requests
from dagster_aws.secretsmanager import SecretsManagerResource

from shopify_pipeline.defs.assets import pages_key, step_key, sync_assets, sync_run_config, table_key
from shopify_pipeline.defs.checks import sync_checks
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.simulator import FaultConfig, FaultRule
from shopify_pipeline.simulator.config import BulkFaults
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.defs.conftest import source_of_truth, stored
from shopify_pipeline_tests.support.hostile_server import HostileServer, Respond, rule_for


def materialize(instance, sync_engine, user: str, data_types=DATA_TYPES, sync_type: str = "manual", **kwargs):
    """Materialize the sync assets (and their checks) of `data_types` for `user` in `instance`."""
    instance.add_dynamic_partitions("shopify_users", [user])
    keys = {key for d in data_types for key in (pages_key(d), table_key(d))}
    assets = [a for a in sync_assets if a.key in keys]
    checks = [c for c in sync_checks if next(iter(c.check_keys)).asset_key in keys]
    return dg.materialize(
        [*assets, *checks], partition_key=user, instance=instance, resources={"sync_engine": sync_engine},
        run_config=sync_run_config(sync_type, tuple(data_types)), raise_on_error=False, **kwargs,
    )


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def step_events(result, step: str, kind: dg.DagsterEventType) -> list:
    return [e for e in result.all_events if e.step_key == step and e.event_type == kind]


def test_a_user_partition_fills_dynamodb_exactly(instance, sync_engine, engine, connected, sim):
    result = materialize(instance, sync_engine, "user-acme", sync_type="initial")
    assert result.success
    for data_type in DATA_TYPES:
        assert stored(engine, "user-acme", data_type) == source_of_truth(sim, "acme", data_type)
        fetched, loaded = metadata(result, pages_key(data_type)), metadata(result, table_key(data_type))
        count = len(sim.records("acme", data_type))
        assert fetched["records"] == loaded["records_written_this_run"] == loaded["dagster/row_count"] == count
        assert fetched["sync_type"] == loaded["sync_type"] == "initial"
        assert loaded["dagster/table_name"] == engine.settings.tables.records(data_type)
        assert fetched["failed_pages"] == 0 and loaded["failed_batches"] == 0 and loaded["finished"]
        assert "updated_at" in loaded["preview"] and loaded["preview"].count("\n") == 6  # header, rule, 5 rows
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 15 and all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks]
    assert {c.partition for c in checks} == {"user-acme"}
    assert metadata(result, pages_key("orders"))["pages"] >= 7  # 700 orders in 4 slices of 100-record pages
    partitions = instance.get_materialized_partitions(table_key("orders"))
    assert partitions == {"user-acme"}


def test_a_daily_run_through_graphql_survives_throttling_partial_data_and_5xx(instance, sync_engine, engine,
                                                                               connected, sim):
    """Initial, then changes and deletions in Shopify, then a daily run whose queries meet THROTTLED answers,
    partial data and 502s on every data type: it ends equal to Shopify, deletions removed."""
    assert materialize(instance, sync_engine, "user-small", sync_type="initial").success
    for data_type in DATA_TYPES:
        sim.update_records("small", data_type, n=3, seed=41)
    deleted = sim.delete_records("small", "orders", n=2, seed=42)
    sim.set_faults("small", FaultConfig(rules=tuple(
        FaultRule(kind, endpoint=f"graphql:{data_type}", times=1)
        for data_type in DATA_TYPES for kind in ("throttled", "partial", "502"))))
    result = materialize(instance, sync_engine, "user-small", sync_type="daily")
    assert result.success
    served = sim.stats("small")["faults_served"]
    assert served.get("throttled", 0) >= 3 and served.get("partial", 0) >= 3 and served.get("502", 0) >= 3, served
    for data_type in DATA_TYPES:
        fetched = metadata(result, pages_key(data_type))
        assert fetched["sync_type"] == "daily" and fetched["failed_pages"] == 0
        assert stored(engine, "user-small", data_type) == source_of_truth(sim, "small", data_type)
    assert not set(deleted) & set(stored(engine, "user-small", "orders"))
    assert metadata(result, table_key("orders"))["deleted_this_run"] == 2


def test_listings_above_the_bulk_threshold_are_exported_with_one_operation_each_in_a_dagster_run(instance, sync_engine,
                                                                                         engine, connected, sim):
    bulk_engine = SyncEngineResource(dynamodb=sync_engine.dynamodb, shopify=sync_engine.shopify,
                                     min_records_to_slice=500, bulk_threshold=50, bulk_poll_seconds=0.05,
                                     bulk_max_poll_seconds=0.2)
    before = len(sim.bulk_operations("acme"))
    result = materialize(instance, bulk_engine, "user-acme", sync_type="initial")
    assert result.success
    # 700 orders and 60 customers are above the threshold of 50, 40 products below: two operations, in parallel.
    assert len(sim.bulk_operations("acme")) - before == 2
    for data_type in DATA_TYPES:
        assert stored(engine, "user-acme", data_type) == source_of_truth(sim, "acme", data_type)
        assert metadata(result, pages_key(data_type))["records"] == len(sim.records("acme", data_type))
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_a_bulk_export_that_fails_midway_is_finished_by_a_second_operation_in_a_dagster_run(
        instance, sync_engine, engine, connected, sim):
    bulk_engine = SyncEngineResource(dynamodb=sync_engine.dynamodb, shopify=sync_engine.shopify,
                                     min_records_to_slice=500, bulk_threshold=50, bulk_poll_seconds=0.05,
                                     bulk_max_poll_seconds=0.2)
    sim.set_bulk_faults("acme", BulkFaults(fail="INTERNAL_SERVER_ERROR", fail_at=0.4, partial_data=True,
                                           root_field="orders", times=1))
    before = len(sim.bulk_operations("acme"))
    try:
        result = materialize(instance, bulk_engine, "user-acme", sync_type="manual", data_types=("orders",))
    finally:
        sim.set_bulk_faults("acme", BulkFaults())
    assert result.success
    failed, rest = sim.bulk_operations("acme")[before:]
    assert failed["status"] == "FAILED" and failed["partialDataUrl"] and "id:>" in rest["query"]
    assert stored(engine, "user-acme", "orders") == source_of_truth(sim, "acme", "orders")
    assert metadata(result, pages_key("orders"))["records"] == len(sim.records("acme", "orders"))
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_a_dagster_run_refreshes_an_expiring_token_kept_in_secrets_manager(instance, sync_engine, sim,
                                                                           secrets_manager):
    # Secrets Manager through dagster-aws's resource, at the local server (moto's, a real HTTP endpoint).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        secrets = SecretsManagerResource(endpoint_url=secrets_manager.endpoint_url, region_name="us-east-1",
                                         aws_access_key_id="local", aws_secret_access_key="local")
    resource = SyncEngineResource(dynamodb=sync_engine.dynamodb, shopify=sync_engine.shopify, secrets=secrets)
    engine = resource.engine()
    SyncService(engine).connect_expiring("user-public", sim.shop_url("public"), "literal:pipeline-app:app-secret-d4c1",
                                         f"test/user-public/{uuid.uuid4().hex}",
                                         code=sim.authorization_code("public"))
    sim.expire_access_tokens("public")  # the run starts with a token that ran out
    before = sim.stats("public")["auth"]["refreshes"]
    result = materialize(instance, resource, "user-public", sync_type="initial")
    assert result.success
    assert sim.stats("public")["auth"]["refreshes"] == before + 1
    for data_type in DATA_TYPES:
        assert stored(engine, "user-public", data_type) == source_of_truth(sim, "public", data_type)
    # Nothing secret in the run's event log (messages, metadata, config).
    events = json.dumps([repr(record) for record in instance.all_logs(result.run_id)])
    secret_values = [*sim.valid_access_tokens("public"), *sim.valid_refresh_tokens("public"), "app-secret-d4c1"]
    assert not [value[:8] for value in secret_values if value in events]


def test_a_rejected_webhook_fails_the_users_webhooks_applied_check(instance, sync_engine, engine, connected, sim):
    from shopify_pipeline.webhooks.handler import Delivery, WebhookHandler

    handler = WebhookHandler(engine, sim.webhook_secret("small"))
    body = json.dumps({"id": "not-a-number"}).encode()
    signature = base64.b64encode(hmac.new(sim.webhook_secret("small").encode(), body, hashlib.sha256).digest())
    outcome = handler.handle(Delivery("orders/updated", "small.myshopify.com", "evt-1", "2026-11-29T00:00:00Z",
                                      body, signature.decode()))
    assert outcome.result == "rejected"
    result = materialize(instance, sync_engine, "user-small", data_types=("orders",))
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["webhooks_applied"].passed is False
    assert checks["webhooks_applied"].metadata["events_rejected"].value == 1


def test_a_transient_fault_is_retried_by_the_retry_policy_and_succeeds(instance, sync_engine, engine, connected,
                                                                        sim):
    # The client tries a page 4 times (3 retries); failing 5 times fails the page once, then the step retry
    # asks for it a fifth time and gets it.
    sim.set_faults("small", FaultConfig(rules=(FaultRule("502", endpoint="graphql:products", page=1, times=5),)))
    result = materialize(instance, sync_engine, "user-small", data_types=("products",))
    assert result.success
    step = step_key(pages_key("products"))
    # The first try's check failed in that very run, with the page; the retry's passed.
    page_checks = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_failed_pages"]
    assert [c.passed for c in page_checks] == [False, True]
    assert page_checks[0].metadata["failed_pages"].value == 1
    # Each retry and its reason is in the run's event log, not only on stderr.
    logged = [entry.user_message for entry in instance.all_logs(result.run_id) if entry.step_key == step]
    retries = [m for m in logged if "Shopify answered 502 for" in m and "; retry " in m]
    assert retries, logged
    assert len(retries) <= 3  # rate-limited: at most one line of a kind per 5 s (and a count of the others)
    assert len(step_events(result, step, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert len(step_events(result, step, dg.DagsterEventType.STEP_RESTARTED)) == 1
    assert stored(engine, "user-small", "products") == source_of_truth(sim, "small", "products")


def test_a_401_fails_at_once_without_retry_and_says_why(instance, sync_engine, connected):
    result = materialize(instance, sync_engine, "user-badtoken", data_types=("orders",))
    assert not result.success
    step = step_key(pages_key("orders"))
    assert not step_events(result, step, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    [failure] = step_events(result, step, dg.DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.user_failure_data.description
    assert "token" in message.lower() and "shpat_wrong" not in message
    assert failure.step_failure_data.user_failure_data.metadata["reason"].value == "invalid_token"


def test_a_failed_page_fails_the_partition_and_the_rerun_fetches_only_what_is_missing(
        instance, sync_engine, engine, connected, sim):
    # Page 2 of every slice fails for good: the RetryPolicy tries the step 3 more times, then it fails.
    sim.set_faults("acme", FaultConfig(rules=(FaultRule("502", endpoint="graphql:orders", page=2, times=0),)))
    first = materialize(instance, sync_engine, "user-acme", data_types=("orders",))
    assert not first.success
    step = step_key(pages_key("orders"))
    assert len(step_events(first, step, dg.DagsterEventType.STEP_RESTARTED)) == 3
    [failure] = step_events(first, step, dg.DagsterEventType.STEP_FAILURE)
    failed = failure.step_failure_data.user_failure_data
    # The failure is our words, first: the pages and what to do, not "Exceeded max_retries".
    assert failed.description.startswith("4 page(s) of orders failed after retries (slice 0 page 2: ")
    assert "Materialize this partition again" in failed.description
    assert failure.step_failure_data.error is None or "max_retries" not in failure.step_failure_data.error.message
    # Each try reported its failed check in this run, with the failed pages in the metadata.
    page_checks = [c for c in first.get_asset_check_evaluations() if c.check_name == "no_failed_pages"]
    assert len(page_checks) == 4 and not any(c.passed for c in page_checks)
    assert page_checks[-1].metadata["failed_pages"].value == 4 and page_checks[-1].partition == "user-acme"
    last_attempt = {name: value.value for name, value in failed.metadata.items()}
    # The last retry resumed and asked only for the 4 failed pages (4 tries each), fetching nothing new.
    assert last_attempt["resumed"] and last_attempt["failed_pages"] == 4
    assert last_attempt["pages_this_run"] == 0 and last_attempt["requests_this_run"] == 16
    staged = last_attempt["pages"]
    assert staged == 4
    assert not instance.get_materialized_partitions(table_key("orders"))

    sim.set_faults("acme", FaultConfig())
    before = sim.stats("acme")["requests"]["graphql"]
    second = materialize(instance, sync_engine, "user-acme", data_types=("orders",))
    assert second.success
    fetched = metadata(second, pages_key("orders"))
    assert fetched["resumed"] and fetched["pages_this_run"] == fetched["pages"] - staged
    # What the metadata says it asked is what Shopify saw (the missing pages, and the line items of big orders),
    # plus the one ordersCount query of the record_count_matches_shopify check.
    assert sim.stats("acme")["requests"]["graphql"] - before == fetched["requests_this_run"] + 1
    assert stored(engine, "user-acme", "orders") == source_of_truth(sim, "acme", "orders")
    assert instance.get_materialized_partitions(table_key("orders")) == {"user-acme"}


def test_records_shopify_sent_broken_fail_the_load_once_without_retry(instance, sync_engine, engine, sim):
    """A page with an order without id: its other records are written, the load fails permanently (no
    RetryPolicy retries of a deterministic error) and says which record and field."""
    page = requests.get(f"{sim.shop_url('small')}/admin/api/2026-10/orders.json?limit=250&status=any",
                        headers={"X-Shopify-Access-Token": "shpat_small"}, timeout=10).json()
    del page["orders"][2]["id"]
    with HostileServer(upstream=sim.base_url) as hostile:
        hostile.script(rule_for("/orders.json", Respond(200, json.dumps(page).encode()), times=None))
        SyncService(engine).add_connection("user-broken", f"{hostile.url}/shops/small", "literal:shpat_small",
                                           api="rest")
        result = materialize(instance, sync_engine, "user-broken", data_types=("orders",), sync_type="initial")
    assert not result.success
    step = step_key(table_key("orders"))
    assert not step_events(result, step, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    [failure] = step_events(result, step, dg.DagsterEventType.STEP_FAILURE)
    failed = failure.step_failure_data.user_failure_data
    assert "record 3: `id` is missing" in failed.description
    assert failed.metadata["reason"].value == "bad_record"
    assert len(stored(engine, "user-broken", "orders")) == len(page["orders"]) - 1


def test_a_lease_left_by_a_crashed_sync_on_another_host_is_waited_out_not_given_up_on(
        instance, sync_engine, engine, connected, sim):
    # A holder on another host that stopped renewing: its lease runs 4 s more. The step's retry waits for the
    # expiry (the policy's 1-2-4 s backoff would give up first), then the sync runs.
    engine.state.leases.acquire("user-small", "orders", "another-host:4242:abcdef:4026531836", seconds=4)
    result = materialize(instance, sync_engine, "user-small", data_types=("orders",))
    assert result.success
    step = step_key(pages_key("orders"))
    [retry] = step_events(result, step, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert retry.event_specific_data.seconds_to_wait >= 3  # the lease's remaining life, not the policy's 1 s
    assert stored(engine, "user-small", "orders") == source_of_truth(sim, "small", "orders")
