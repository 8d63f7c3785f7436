"""An unlucky daily tick: DynamoDB refuses the schedule's read of the connections when the tick comes. With
the repository's dagster.yaml (`scheduler.max_tick_retries: 3`) dagster-daemon tries the same tick again on its
next pass and the day's runs are launched; Dagster's default (0) would skip them until the next day."""

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from shopify_pipeline.defs.partitions import USER_PARTITIONS_NAME
from shopify_pipeline.defs.schedules import DAILY_CRON_VARIABLE
from shopify_pipeline.local_dagster import DagsterDaemon, daily_cron_at, next_whole_minute
from shopify_pipeline_tests.defs.conftest import table_prefix
from shopify_pipeline_tests.support.dynamo_fault_proxy import THROTTLE, DynamoFaultProxy

ROOT = Path(__file__).resolve().parents[2]
SCHEDULED_TIME_TAG = ".dagster/scheduled_execution_time"


def _schedule_ticks(instance: dg.DagsterInstance) -> list:
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
        if state.instigator_name == "daily_sync_schedule":
            return instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return []


def _wait(what: str, condition, daemon: DagsterDaemon, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert daemon.running(), f"dagster-daemon exited: {daemon.log_tail()}"
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; daemon log: {daemon.log_tail()}")


def test_a_daily_tick_that_meets_a_dynamodb_outage_is_tried_again(settings, connected, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # SQLite storage, the repository's settings
    tick = next_whole_minute()
    with DynamoFaultProxy(settings.dynamodb_endpoint_url) as proxy, \
            dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(USER_PARTITIONS_NAME, sorted(connected))  # the sensor's work, done
        env = {"SHOPIFY_PIPELINE_ENV": "local", "AWS_ENDPOINT_URL_DYNAMODB": proxy.endpoint_url,
               "SHOPIFY_PIPELINE_TABLE_PREFIX": table_prefix(settings), DAILY_CRON_VARIABLE: daily_cron_at(tick)}
        # Every Scan throttled beyond botocore's retries: the schedule cannot list the connections.
        proxy.add_fault(THROTTLE, operation="Scan")
        with DagsterDaemon(home, env, tmp_path / "daemon.log") as daemon:
            failed = _wait("the tick to fail", lambda: [t for t in _schedule_ticks(instance)
                                                         if t.status == TickStatus.FAILURE], daemon)
            assert failed[0].timestamp == tick.timestamp()
            assert "throttl" in (failed[0].error.to_string() if failed[0].error else "").lower()
            assert not instance.get_run_records(dg.RunsFilter(job_name="daily_sync"))
            proxy.clear_faults()  # DynamoDB is back

            runs = _wait("the retried tick's runs", lambda: instance.get_run_records(
                dg.RunsFilter(job_name="daily_sync")) if len(instance.get_run_records(
                    dg.RunsFilter(job_name="daily_sync"))) >= len(connected) else None, daemon)
            done = _wait("the tick to succeed", lambda: [t for t in _schedule_ticks(instance)
                                                          if t.status == TickStatus.SUCCESS], daemon)
    assert done[0].timestamp == tick.timestamp()  # the same tick, tried again: not the next day's
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in runs) == sorted(connected)
    assert {datetime.fromisoformat(r.dagster_run.tags[SCHEDULED_TIME_TAG]) for r in runs} == {
        tick.astimezone(timezone.utc)}
