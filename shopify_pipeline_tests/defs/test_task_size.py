"""A lasting ECS task size for one user (issue #16): `users task-size` stores it on the connection, the schedule
and the connections sensor tag the user's runs with it (`ecs/cpu`, `ecs/memory`, which dagster-aws's
EcsRunLauncher reads), `users add` keeps it, and a size Fargate does not offer is refused with the ones it does."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import dagster as dg
import pytest

from shopify_pipeline.defs.schedules import daily_sync_schedule
from shopify_pipeline.defs.sensors import shopify_connections_sensor
from shopify_pipeline.dynamo.connections import (
    ConnectionStore,
    InvalidTaskSizeError,
    UnknownUserError,
    check_task_size,
)
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.defs.conftest import table_prefix

ECS_TAGS = ("ecs/cpu", "ecs/memory")


@pytest.mark.parametrize(("cpu", "memory"), [(256, 512), (256, 2048), (512, 4096), (1024, 2048), (2048, 16384),
                                             (4096, 30720), (8192, 20480), (16384, 122880)])
def test_every_fargate_size_is_taken(cpu, memory):
    assert check_task_size(cpu, memory) == {"cpu": str(cpu), "memory": str(memory)}


@pytest.mark.parametrize(("cpu", "memory", "offered"), [
    (256, 1536, "512, 1024, 2048 MiB"),  # 256 CPU units take three sizes only
    (512, 8192, "1024-4096 MiB in steps of 1024"),
    (1024, 2500, "2048-8192 MiB in steps of 1024"),
    (8192, 18432, "16384-61440 MiB in steps of 4096"),
    (1000, 2048, "one of 256, 512, 1024"),
    (0, 0, "one of 256"),
])
def test_a_size_fargate_does_not_offer_is_refused_with_the_ones_it_does(cpu, memory, offered):
    with pytest.raises(InvalidTaskSizeError, match=offered):
        check_task_size(cpu, memory)


def test_a_users_task_size_tags_its_scheduled_and_sensor_runs_and_outlives_users_add(
        instance, sync_engine, engine, connected, sim):
    connections = engine.connections
    assert connections.set_task_size("user-acme", 1024, 4096).task_size == {"cpu": "1024", "memory": "4096"}
    with pytest.raises(InvalidTaskSizeError, match="1024-4096"):
        connections.set_task_size("user-small", 512, 8192)
    with pytest.raises(InvalidTaskSizeError, match="both"):
        connections.set_task_size("user-small", 512, None)
    with pytest.raises(UnknownUserError, match="users add"):
        connections.set_task_size("user-nobody", 1024, 4096)
    assert not connections.get("user-small").task_size  # the refused sizes changed nothing

    # The sensor's initial runs: the sized user's carry the ECS tags, the others none (dagster.yaml's default).
    with dg.build_sensor_context(instance=instance, resources={"sync_engine": sync_engine}) as context:
        initial = {r.partition_key: r.tags for r in shopify_connections_sensor(context).run_requests}
    assert {tag: initial["user-acme"][tag] for tag in ECS_TAGS} == {"ecs/cpu": "1024", "ecs/memory": "4096"}
    assert not any(tag in initial["user-small"] for tag in ECS_TAGS)

    # A new token for the same shop, and even another shop: the operator's size stays.
    SyncService(engine).add_connection("user-acme", sim.shop_url("acme"), "literal:shpat_acme")
    assert connections.get("user-acme").task_size == {"cpu": "1024", "memory": "4096"}
    SyncService(engine).add_connection("user-acme", sim.shop_url("small"), "literal:shpat_small", replace=True)
    assert connections.get("user-acme").task_size == {"cpu": "1024", "memory": "4096"}

    instance.add_dynamic_partitions("shopify_users", sorted(connected))
    when = datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                   resources={"sync_engine": sync_engine}) as context:
        daily = {r.partition_key: r.tags for r in daily_sync_schedule(context)}
    assert daily["user-acme"] == {"shopify/user": "user-acme", "ecs/cpu": "1024", "ecs/memory": "4096"}
    assert daily["user-small"] == {"shopify/user": "user-small"}

    assert connections.set_task_size("user-acme", None, None).task_size == {}  # cleared: the default again
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                   resources={"sync_engine": sync_engine}) as context:
        assert not any(tag in r.tags for r in daily_sync_schedule(context) for tag in ECS_TAGS)


def test_the_cli_sets_shows_refuses_and_clears_a_task_size(settings, connected):
    environ = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
               "SHOPIFY_PIPELINE_TABLE_PREFIX": table_prefix(settings)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shopify_pipeline.cli", "users", *args], env=environ,
                              capture_output=True, text=True, timeout=120)

    done = cli("task-size", "--user", "user-acme", "--cpu", "2048", "--memory", "8192")
    assert done.returncode == 0 and "2048 CPU units and 8192 MiB" in done.stdout, done.stdout + done.stderr
    assert "task 2048/8192" in cli("list").stdout
    refused = cli("task-size", "--user", "user-acme", "--cpu", "2048", "--memory", "2048")
    assert refused.returncode == 2 and "4096-16384 MiB in steps of 1024" in refused.stderr, refused.stderr
    unknown = cli("task-size", "--user", "user-nobody", "--cpu", "512", "--memory", "1024")
    assert unknown.returncode == 2 and "users add" in unknown.stderr, unknown.stderr
    incomplete = cli("task-size", "--user", "user-acme", "--cpu", "512")
    assert incomplete.returncode != 0 and "--memory" in incomplete.stderr
    no_cpu = cli("task-size", "--user", "user-acme", "--cpu", "0", "--memory", "512")  # 0 is a size, a wrong one
    assert no_cpu.returncode == 2 and "CPU units are one of 256" in no_cpu.stderr, no_cpu.stderr
    both = cli("task-size", "--user", "user-acme", "--clear", "--cpu", "1024", "--memory", "4096")
    assert both.returncode != 0 and "not both" in both.stderr
    elsewhere = cli("remove", "--user", "user-acme", "--cpu", "1024", "--memory", "4096")
    assert elsewhere.returncode != 0 and "takes no --cpu" in elsewhere.stderr
    listed = {c["user_id"]: c["task_size"] for c in json.loads(cli("list", "--json").stdout)}
    assert listed["user-acme"] == {"cpu": "2048", "memory": "8192"}  # the refusals changed nothing
    readded = cli("add", "--user", "user-new", "--shop", "acme.myshopify.com", "--token-ref", "env:NEW_TOKEN",
                  "--cpu", "4096", "--memory", "30720")
    assert readded.returncode == 0 and "task 4096 CPU / 30720 MiB" in readded.stdout, readded.stdout + readded.stderr
    refused_add = cli("add", "--user", "user-other", "--shop", "acme.myshopify.com", "--token-ref", "env:X_TOKEN",
                      "--cpu", "4096", "--memory", "4096")
    assert refused_add.returncode == 2 and "8192-30720" in refused_add.stderr, refused_add.stderr
    listed = {c["user_id"]: c["task_size"] for c in json.loads(cli("list", "--json").stdout)}
    assert listed["user-new"] == {"cpu": "4096", "memory": "30720"} and "user-other" not in listed
    cleared = cli("task-size", "--user", "user-acme", "--clear")
    assert cleared.returncode == 0 and "run_resources" in cleared.stdout
    assert {c["user_id"]: c["task_size"] for c in json.loads(cli("list", "--json").stdout)}["user-acme"] == {}


@pytest.mark.parametrize("bad", [
    {"M": {"cpu": {"S": "1024"}}},  # memory missing
    {"S": "1024/4096"},  # not a map
    {"M": {"cpu": {"N": "1024.0"}, "memory": {"S": "4 GB"}}},  # not numbers of MiB
    {"M": {"cpu": {"S": "1024"}, "memory": {"S": "3000"}}},  # a size Fargate does not offer
    {"M": {"cpu": {"L": []}, "memory": {"NULL": True}}},
])
def test_one_bad_stored_task_size_never_stops_the_fleets_runs(instance, sync_engine, engine, connected, bad,
                                                               caplog):
    # Written by hand (or by a later release): the schedule and the sensor still request every user's run,
    # that user's with dagster.yaml's default size, and say which row they ignored.
    engine.dynamodb.update_item(TableName=engine.settings.tables.connections, Key={"userId": {"S": "user-small"}},
                                UpdateExpression="SET taskSize = :bad", ExpressionAttributeValues={":bad": bad})
    engine.connections.set_task_size("user-acme", 512, 2048)
    with dg.build_sensor_context(instance=instance, resources={"sync_engine": sync_engine}) as context:
        initial = {r.partition_key: r.tags for r in shopify_connections_sensor(context).run_requests}
    instance.add_dynamic_partitions("shopify_users", sorted(connected))
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 11, 30, 3, 0,
                                   tzinfo=timezone.utc), resources={"sync_engine": sync_engine}) as context:
        daily = {r.partition_key: r.tags for r in daily_sync_schedule(context)}
    for requested in (initial, daily):
        assert set(requested) == set(connected)
        assert requested["user-small"] == {"shopify/user": "user-small"}
        assert requested["user-acme"]["ecs/memory"] == "2048"
    assert "user user-small: ignoring its stored task size" in caplog.text
    assert engine.connections.get("user-small").task_size == {}


def test_users_add_never_undoes_a_task_size_set_while_it_writes(engine, connected, sim):
    """`users add` reads the connection, then writes it whole: a size set in between must survive."""

    class SizeSetMeanwhile(ConnectionStore):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            self.meanwhile = lambda: engine.connections.set_task_size("user-acme", 2048, 8192)

        def _call(self, operation: str, **kwargs) -> dict:
            answer = super()._call(operation, **kwargs)
            if operation == "get_item" and self.meanwhile:
                meanwhile, self.meanwhile = self.meanwhile, None
                meanwhile()
            return answer

    racing = SizeSetMeanwhile(engine.dynamodb, engine.settings)
    added = racing.add("user-acme", sim.shop_url("acme"), "literal:shpat_acme")
    assert added.task_size == {"cpu": "2048", "memory": "8192"}
    assert engine.connections.get("user-acme").task_size == {"cpu": "2048", "memory": "8192"}
    assert engine.connections.get("user-acme").token_ref == "literal:shpat_acme"


def test_users_add_can_set_the_task_size_of_a_new_users_first_run(engine, sim):
    added = engine.connections.add("user-big", sim.shop_url("acme"), "literal:shpat_acme",
                                   task_size=check_task_size(4096, 16384))
    assert added.task_size == engine.connections.get("user-big").task_size == {"cpu": "4096", "memory": "16384"}
