"""The fleet on Dagster's own machinery, as production runs it minus the ECS launcher: PostgreSQL storage
(dagster-postgres), `dagster-daemon` running the run queue, the schedule and the sensors, each run its own
process (DefaultRunLauncher) with the in-process executor. Real servers only: PostgreSQL, DynamoDB Local,
the simulator.

Phase 1 (one daemon): two runs of one user wait for each other in the queue, with room in it for more, while
`shopify_connections_sensor` registers two other users and launches their initial syncs.
Phase 2: 100 more users, synced once by the engine in this process (their initial syncs through Dagster take
~18 min on 2 cores: the benchmark, `benchmarks/fleet.py`, measures those) and added as partitions.
Phase 3 (the daemon again, its daily cron set to the next minute, with Dagster's threaded submission): one tick
of `daily_sync_schedule` launches one daily run per user, runs of different users overlap, all succeed, no two
runs of one user ever overlap, the lease refuses nothing, and every user's tables equal the simulator's shop.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from shopify_pipeline.defs.assets import sync_assets, sync_run_config
from shopify_pipeline.defs.partitions import USER_PARTITIONS_NAME, USER_TAG
from shopify_pipeline.defs.resources import DynamoDBResource, ShopifyResource, SyncEngineResource
from shopify_pipeline.defs.schedules import DAILY_CRON_VARIABLE, daily_cron
from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.tables import create_tables
from shopify_pipeline.local_dagster import (
    DagsterDaemon,
    daily_cron_at,
    fleet_instance_config,
    launch_job,
    lease_refusals,
    next_whole_minute,
    overlapping_runs,
    run_times,
    wait_for,
    write_instance,
)
from shopify_pipeline.local_postgres import LocalPostgres, LocalPostgresError, postgres_bin_dir
from shopify_pipeline.settings import DATA_TYPES, Settings, SettingsError, ShopifySettings
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.defs.conftest import source_of_truth, stored, table_prefix

pytestmark = pytest.mark.timeout(5400)  # a bound for a stuck daemon, not a time to meet

FLEET = int(os.environ.get("SHOPIFY_PIPELINE_FLEET_TEST_USERS", "100"))  # fewer while iterating on the test
LARGER_EVERY = 25  # 4 of the 100 shops are larger
SUBMIT_WORKERS = 4  # Dagster's threaded submission, as docs/production.md recommends for a fleet
# The queue scenario: q-slow gets two runs; q-a and q-b are other users running beside its first.
QUEUE_SHOPS = [
    ShopConfig("q-slow", "shpat_q_slow", orders=400, products=30, customers=60, seed=1, plan="plus"),
    ShopConfig("q-a", "shpat_q_a", orders=20, products=3, customers=5, seed=2, plan="plus"),
    ShopConfig("q-b", "shpat_q_b", orders=20, products=3, customers=5, seed=3, plan="plus"),
]
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
IN_PROGRESS = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}


def fleet_shops() -> list[ShopConfig]:
    """Most shops small (10-40 orders), every LARGER_EVERY-th larger (300 orders)."""
    return [
        ShopConfig(f"s{i:03d}", f"shpat_s{i:03d}", seed=100 + i, plan="plus",
                   **({"orders": 300, "products": 40, "customers": 80} if i % LARGER_EVERY == LARGER_EVERY - 1
                      else {"orders": 10 + i % 31, "products": 2 + i % 5, "customers": 3 + i % 9}))
        for i in range(FLEET)
    ]


@pytest.fixture(scope="module")
def postgres():
    """Debian's PostgreSQL on a free port: required in CI, skipped with a message elsewhere when absent."""
    try:
        postgres_bin_dir()
    except LocalPostgresError as error:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the fleet test needs PostgreSQL in CI: {error}")
        pytest.skip(str(error))
    with LocalPostgres() as server:
        yield server


@pytest.fixture(scope="module")
def fleet_sim():
    with Simulator(QUEUE_SHOPS + fleet_shops(), time_scale=10) as running:
        yield running


@pytest.fixture(scope="module")
def fleet_settings(dynamodb_endpoint) -> Settings:
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint}).with_prefix(
        f"f{uuid.uuid4().hex[:8]}_")
    create_tables(dynamodb_client(settings), settings.tables)
    return settings


def test_the_daily_cron_comes_from_the_environment_and_a_bad_one_is_named():
    assert daily_cron({}) == "0 3 * * *"
    assert daily_cron({DAILY_CRON_VARIABLE: "*/5 * * * *"}) == "*/5 * * * *"
    with pytest.raises(SettingsError, match=DAILY_CRON_VARIABLE):
        daily_cron({DAILY_CRON_VARIABLE: "at three"})


def test_the_instance_is_the_repositorys_dagster_yaml_with_postgres_storage():
    config = fleet_instance_config({"hostname": "db", "port": 5432})
    assert config["storage"] == {"postgres": {"postgres_db": {"hostname": "db", "port": 5432}}}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    limits = {limit["key"]: limit for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert limits[USER_TAG]["limit"] == 1 and limits[USER_TAG]["value"] == {"applyLimitPerUniqueValue": True}
    assert limits["dagster/partition"]["limit"] == 1


def test_a_lease_refusal_is_counted(settings):
    """The counter the fleet test expects to read 0 does see a refusal: a sync of customers (the first step)
    whose lease another host holds for 5 s waits it out (the step's retry) and is counted once."""
    user = "user-leased"
    with Simulator([ShopConfig("leased", "shpat_leased", orders=5, products=1, customers=1, plan="plus")],
                   time_scale=10) as sim, dg.instance_for_test() as instance:
        engine = SyncEngine(settings, ShopifySettings(allow_local_shops=True))
        SyncService(engine).add_connection(user, sim.shop_url("leased"), "literal:shpat_leased")
        engine.state.leases.acquire(user, "customers", owner="another-host:1:abcdef:1", seconds=5)
        instance.add_dynamic_partitions(USER_PARTITIONS_NAME, [user])
        resource = SyncEngineResource(
            dynamodb=DynamoDBResource(endpoint_url=settings.dynamodb_endpoint_url, region_name=settings.aws_region,
                                      table_prefix=table_prefix(settings)),
            shopify=ShopifyResource(allow_local_shops=True))
        result = dg.materialize(sync_assets, partition_key=user, instance=instance,
                                resources={"sync_engine": resource}, run_config=sync_run_config("initial"))
        assert result.success
        [refusal] = lease_refusals(instance, [result.run_id])
        assert "customers" in refusal and "LeaseHeldError" in refusal


def test_per_user_queueing_and_a_100_user_daily_tick(postgres, fleet_sim, fleet_settings, tmp_path):
    sim = fleet_sim
    service = SyncService(SyncEngine(fleet_settings, ShopifySettings(allow_local_shops=True)))
    home = write_instance(tmp_path / "dagster_home", postgres.postgres_db(), submit_workers=SUBMIT_WORKERS)
    env = {"SHOPIFY_PIPELINE_ENV": "local", "AWS_ENDPOINT_URL_DYNAMODB": fleet_settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": table_prefix(fleet_settings),
           DAILY_CRON_VARIABLE: daily_cron_at(datetime.now(timezone.utc) + timedelta(hours=12))}  # no tick now
    log = tmp_path / "daemon.log"
    users = {f"user-{shop.name}": shop.name for shop in QUEUE_SHOPS}
    for user, shop in users.items():
        service.add_connection(user, sim.shop_url(shop), f"literal:shpat_{shop.replace('-', '_')}")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Two runs of q-slow queued before the daemon starts: it registers the partition itself (the sensor
        # then sees q-slow as known and starts only q-a's and q-b's initial syncs).
        instance.add_dynamic_partitions(USER_PARTITIONS_NAME, ["user-q-slow"])
        tags = {USER_TAG: "user-q-slow", "dagster/partition": "user-q-slow"}
        twins = [launch_job(home, env, "full_sync", sync_run_config(kind), tags) for kind in ("initial", "auto")]
        assert [instance.get_run_by_id(r).status for r in twins] == [dg.DagsterRunStatus.QUEUED] * 2

        with DagsterDaemon(home, env, log) as daemon:
            seen_waiting = []  # moments the second waited in the queue while the first ran

            def queue_scenario_done():
                runs = {r.dagster_run.run_id: r.dagster_run for r in instance.get_run_records()}
                statuses = sorted(runs[r].status.value for r in twins)
                if statuses == ["QUEUED", "STARTED"] or statuses == ["QUEUED", "STARTING"]:
                    seen_waiting.append(sum(run.status in IN_PROGRESS for run in runs.values()))
                others = [run for run in runs.values() if run.run_id not in twins]
                return len(others) == 2 and all(run.status in DONE for run in runs.values())

            wait_for(queue_scenario_done, 600, "the queue scenario's runs", every=0.5, alive=daemon.running)
            first_runs = [r.dagster_run for r in instance.get_run_records()]
            assert {run.status for run in first_runs} == {dg.DagsterRunStatus.SUCCESS}, daemon.log_tail()
            times = {t.run_id: t for t in run_times(instance, [run.run_id for run in first_runs])}
            first, second = sorted((times[r] for r in twins), key=lambda t: t.launched)
            # The second run of q-slow waited in the queue while the first ran (with room for more runs: fewer
            # in progress than max_concurrent_runs), and was launched only once the first had ended.
            assert seen_waiting and min(seen_waiting) < 10
            assert second.launched >= first.ended
            print(f"queue: q-slow's second run waited {second.launched - second.enqueued:.1f} s in the queue; "
                  f"its first ran {first.ended - first.launched:.1f} s")
        # The sensor registered q-a and q-b and launched their initial syncs.
        assert set(instance.get_dynamic_partitions(USER_PARTITIONS_NAME)) == set(users)

        # The fleet: FLEET (100) more users, synced once in this process and added as partitions (the sensor
        # then knows them and requests nothing).
        started = time.monotonic()
        for shop in fleet_shops():
            user = f"user-{shop.name}"
            service.add_connection(user, sim.shop_url(shop.name), f"literal:{shop.token}")
            assert service.sync(user, "initial").success
            users[user] = shop.name
        instance.add_dynamic_partitions(USER_PARTITIONS_NAME, [u for u in users if u.startswith("user-s")])
        print(f"initial: {FLEET} users synced by the engine in {time.monotonic() - started:.0f} s")

        # Each shop changes a little before the day's tick.
        for i, shop in enumerate(users.values()):
            sim.update_records(shop, "orders", n=2, seed=i)
            sim.update_records(shop, "customers", n=1, seed=i)

        tick = next_whole_minute()
        with DagsterDaemon(home, {**env, DAILY_CRON_VARIABLE: daily_cron_at(tick)}, log) as daemon:
            started = time.monotonic()

            def daily_done():
                runs = instance.get_run_records(dg.RunsFilter(job_name="daily_sync"))
                return len(runs) >= len(users) and all(r.dagster_run.status in DONE for r in runs)

            wait_for(daily_done, 2400, "the daily runs of one tick", every=2, alive=daemon.running)
            print(f"daily: {len(users)} daily runs done {time.monotonic() - started:.0f} s after the daemon started")
        daily = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(job_name="daily_sync"))]
        assert sorted(run.tags[USER_TAG] for run in daily) == sorted(users)  # one run per user
        assert {run.status for run in daily} == {dg.DagsterRunStatus.SUCCESS}
        assert {datetime.fromisoformat(run.tags[".dagster/scheduled_execution_time"]) for run in daily} == {tick}
        # Runs of different users ran side by side (up to the queue's limit).
        spans = run_times(instance, [run.run_id for run in daily])
        assert max(sum(other.launched < span.ended and other.ended > span.launched for other in spans)
                   for span in spans) >= 2

        every_run = [r.dagster_run.run_id for r in instance.get_run_records()]
        # No two runs of one user ever ran at once, so the DynamoDB lease never had to refuse a sync.
        assert overlapping_runs(run_times(instance, every_run)) == []
        assert lease_refusals(instance, every_run) == []

    engine = service.engine
    for user, shop in users.items():
        for data_type in DATA_TYPES:
            assert stored(engine, user, data_type) == source_of_truth(sim, shop, data_type), (user, data_type)
