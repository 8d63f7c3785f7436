"""The schedule, the sensor, the jobs and the Definitions, evaluated against a real instance."""

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from shopify_pipeline.defs.assets import sync_run_config, table_key
from shopify_pipeline.defs.jobs import retry_failed_batches_job
from shopify_pipeline.defs.resources import resources_from_env
from shopify_pipeline.defs.schedules import daily_sync_schedule
from shopify_pipeline.defs.sensors import shopify_connections_sensor
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.settings import SettingsError
from shopify_pipeline.sync.service import SyncService

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_with_every_job_schedule_sensor_and_check():
    from shopify_pipeline.definitions import defs

    assert {job.name for job in defs.resolve_all_job_defs()} >= {"full_sync", "daily_sync", "retry_failed_batches_job"}
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == {
        f"{prefix}/{name}" for d in ("orders", "products", "customers")
        for prefix, name in (("shopify", f"{d}_pages"), ("dynamodb", d))}
    # Per data type: no_failed_pages, no_failed_batches (reported by the assets), count, freshness, webhooks.
    assert len(list(graph.asset_check_keys)) == 15
    assert defs.resolve_schedule_def("daily_sync_schedule").job_name == "daily_sync"
    assert defs.resolve_sensor_def("shopify_connections_sensor").job_name == "full_sync"
    assert defs.resolve_sensor_def("sync_failure_sensor")
    for key in defs.resolve_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:data-platform"] and "python" in node.kinds
        assert "dagster/code_references" in node.metadata
    assert graph.get(table_key("orders")).freshness_policy is not None


def test_dagster_definitions_validate_passes(tmp_path):
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "shopify_pipeline.definitions"],
        # No SHOPIFY_PIPELINE_ENV, no endpoint: validating must not need DynamoDB or Shopify.
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_the_environment_setting_chooses_local_or_aws():
    env = {"SHOPIFY_PIPELINE_ENV": "local", "SHOPIFY_PIPELINE_TABLE_PREFIX": "dev_"}
    local = resources_from_env(env)["sync_engine"]
    assert local.shopify.allow_local_shops and isinstance(local.dynamodb.endpoint_url, dg.EnvVar)
    aws = resources_from_env({"SHOPIFY_PIPELINE_ENV": "aws", "AWS_REGION": "eu-west-1"})["sync_engine"]
    assert not aws.shopify.allow_local_shops and aws.dynamodb.endpoint_url is None
    with pytest.raises(SettingsError, match="SHOPIFY_PIPELINE_ENV"):
        resources_from_env({"SHOPIFY_PIPELINE_ENV": "prod"})


def test_an_unknown_sync_type_is_refused_before_the_run_starts():
    from shopify_pipeline.definitions import defs

    job = defs.resolve_job_def("full_sync")
    assert dg.validate_run_config(job, sync_run_config("initial"))
    with pytest.raises(dg.DagsterInvalidConfigError, match="weekly"):
        dg.validate_run_config(job, sync_run_config("weekly"))


def test_the_schedule_requests_one_daily_run_per_user(instance, sync_engine):
    instance.add_dynamic_partitions("shopify_users", ["user-a", "user-b", "user-c"])
    when = datetime(2026, 3, 4, 3, 0, tzinfo=timezone.utc)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                   resources={"sync_engine": sync_engine}) as context:
        requests = daily_sync_schedule(context)
    assert [r.partition_key for r in requests] == ["user-a", "user-b", "user-c"]
    assert [r.run_key for r in requests] == [f"daily:{u}:2026-03-04" for u in ("user-a", "user-b", "user-c")]
    assert all(r.tags["shopify/user"] == r.partition_key for r in requests)
    assert all(r.run_config == sync_run_config("daily") for r in requests)


def test_the_schedule_skips_when_there_are_no_users(instance, sync_engine):
    with dg.build_schedule_context(instance=instance, resources={"sync_engine": sync_engine}) as context:
        assert isinstance(daily_sync_schedule(context), dg.SkipReason)


def test_the_schedule_skips_a_user_whose_merchant_uninstalled_the_app(instance, sync_engine, engine, connected):
    instance.add_dynamic_partitions("shopify_users", sorted(connected))
    engine.connections.mark_disconnected("user-small", "2026-11-29T00:00:00Z")  # app/uninstalled said so
    when = datetime(2026, 11, 29, 3, 0, tzinfo=timezone.utc)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                   resources={"sync_engine": sync_engine}) as context:
        requested = [r.partition_key for r in daily_sync_schedule(context)]
    assert "user-small" not in requested and "user-acme" in requested


def test_the_sensor_adds_new_users_requests_initial_syncs_and_removes_deleted_users(
        instance, sync_engine, engine, connected):
    with dg.build_sensor_context(instance=instance, resources={"sync_engine": sync_engine}) as context:
        result = shopify_connections_sensor(context)
        users = sorted(connected)
        [add] = result.dynamic_partitions_requests
        assert isinstance(add, dg.AddDynamicPartitionsRequest) and sorted(add.partition_keys) == users
        assert [r.partition_key for r in result.run_requests] == users
        assert all(r.run_config == sync_run_config("initial") for r in result.run_requests)
        assert all(r.tags["shopify/user"] == r.partition_key for r in result.run_requests)

        instance.add_dynamic_partitions("shopify_users", list(add.partition_keys))  # as the daemon does
        assert isinstance(shopify_connections_sensor(context), dg.SkipReason)

        SyncService(engine).remove_connection("user-small")
        result = shopify_connections_sensor(context)
        [delete] = result.dynamic_partitions_requests
        assert isinstance(delete, dg.DeleteDynamicPartitionsRequest) and list(delete.partition_keys) == ["user-small"]
        assert not result.run_requests


def test_the_retry_job_writes_saved_failed_batches_and_reports_counts(instance, sync_engine, engine, connected):
    records = [{"id": n, "name": f"#{n}", "updated_at": "2026-01-01T00:00:00Z"} for n in (1, 2, 3)]
    engine.state.save_failed_batch("user-acme", "manual", "orders", 1, 3, records, "throttled", 5)
    instance.add_dynamic_partitions("shopify_users", ["user-acme"])
    # Partitioned by user; no config: the job finds the data type and the sync type that saved the batch.
    result = retry_failed_batches_job.execute_in_process(partition_key="user-acme", instance=instance,
                                                         resources={"sync_engine": sync_engine})
    assert result.success
    assert RecordTable(engine.dynamodb, engine.settings, "orders").count("user-acme") == 3
    assert not engine.state.failed_batches("user-acme", "manual", "orders")
    observations = [e.event_specific_data.asset_observation for e in result.all_events
                    if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
    [observation] = [o for o in observations if o.asset_key == table_key("orders")]
    assert observation.asset_key == table_key("orders") and observation.partition == "user-acme"
    assert observation.metadata["retried"].value == 1 and observation.metadata["still_failed"].value == 0
