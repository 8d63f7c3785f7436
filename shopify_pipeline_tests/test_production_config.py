"""deploy/dagster.yaml, the production instance, is valid for this Dagster release and keeps the repository's
dagster.yaml queue, concurrency and retry rules; EcsRunLauncher sizes each run's task as the docs say.

Nothing here reaches AWS or Postgres: each configurable class's config is processed against its own schema (env
vars resolved) exactly as Dagster does before instantiating it, and the run launcher is built and launches runs
against moto's in-process ECS and EC2, the RunTask request recorded instead of sent."""

import copy
import re
import shutil
import warnings
from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml
from botocore.validate import validate_parameters
from dagster import DagsterInstance
from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, deserialize_value
from dagster._serdes.config_class import ConfigurableClassData
from dagster_aws.ecs import launcher as ecs_launcher
from dagster_aws.ecs.tasks import CurrentEcsTaskMetadata
from dagster_postgres.utils import pg_url_from_config
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_YAML = ROOT / "deploy" / "dagster.yaml"
LOCAL_YAML = ROOT / "dagster.yaml"
PRODUCTION_DOC = ROOT / "docs" / "production.md"

ENV = {
    "DAGSTER_PG_HOST": "dagster.abc123.eu-west-1.rds.amazonaws.com",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "s3cret",
    "DAGSTER_RUN_TASK_DEFINITION": "shopify-pipeline-run",
    "DAGSTER_COMPUTE_LOGS_BUCKET": "acme-dagster-compute-logs",
    "AWS_DEFAULT_REGION": "eu-west-1",
}

# Where production deliberately differs from the local dagster.yaml (docs/production.md lists the same):
# path in the yaml -> (local value, production value).
DIFFERENCES = {
    ("concurrency", "runs", "max_concurrent_runs"): (10, 200),
    ("concurrency", "pools", "default_limit"): (4, 200),
}


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


def _instance_ref(yaml_path: Path, home: Path) -> InstanceRef:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(yaml_path, home / "dagster.yaml")
    return InstanceRef.from_dir(str(home))


def _processed(data: ConfigurableClassData) -> dict:
    """`data`'s config processed against its class's schema (env vars resolved, defaults filled), as
    `ConfigurableClassData.rehydrate` does before it builds the object; raises as it would."""
    module = __import__(data.module_name, fromlist=[data.class_name])
    klass = getattr(module, data.class_name)
    assert issubclass(klass, ConfigurableClass), f"{data.module_name}.{data.class_name} is not configurable"
    result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
    if not result.success:
        raise DagsterInvalidConfigError(f"{data.module_name}.{data.class_name}", result.errors, data.config_dict)
    return result.value


def _blocks(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_production_yaml_is_valid_for_this_dagster(production_env: dict[str, str], tmp_path: Path) -> None:
    ref = _instance_ref(PRODUCTION_YAML, tmp_path / "home")
    classes = {
        "storage": ref.storage_data, "run_storage": ref.run_storage_data, "event_storage": ref.event_storage_data,
        "schedule_storage": ref.schedule_storage_data, "run_coordinator": ref.run_coordinator_data,
        "run_launcher": ref.run_launcher_data, "compute_logs": ref.compute_logs_data,
        "local_artifact_storage": ref.local_artifact_storage_data, "scheduler": ref.scheduler_data,
    }
    processed = {name: _processed(data) for name, data in classes.items()}

    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    assert pg_url_from_config(processed["storage"]) == (
        f"postgresql+psycopg2://dagster:s3cret@{production_env['DAGSTER_PG_HOST']}:5432/dagster?sslmode=require")
    assert ref.run_launcher_data.module_name == "dagster_aws.ecs"
    assert ref.run_launcher_data.class_name == "EcsRunLauncher"
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert processed["compute_logs"]["bucket"] == production_env["DAGSTER_COMPUTE_LOGS_BUCKET"]

    # The two classes that need neither AWS nor Postgres are built for real.
    # (the queue's limits are the instance's `concurrency` block: test_both_instances_queue_runs_the_same_way)
    assert type(ref.run_coordinator_data.rehydrate()).__name__ == "QueuedRunCoordinator"
    assert ref.compute_logs_data.rehydrate().inst_data == ref.compute_logs_data
    assert ref.settings["telemetry"] == {"enabled": False}
    # The instance reference that every RunTask command carries names the variables, never their values: the
    # run task resolves them from its own environment.
    assert production_env["DAGSTER_PG_PASSWORD"] not in ref.storage_data.config_yaml
    assert "DAGSTER_PG_PASSWORD" in ref.storage_data.config_yaml


def test_a_missing_env_var_fails_the_instance_config(production_env: dict[str, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_PG_HOST")
    ref = _instance_ref(PRODUCTION_YAML, tmp_path / "home")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_HOST"):
        _processed(ref.storage_data)


def test_a_broken_block_fails_the_check(production_env: dict[str, str], tmp_path: Path) -> None:
    """The checks above catch a mistake: a misspelt launcher field, a number where ECS wants a string."""
    for path, bad in ((("run_launcher", "config", "run_resource"), {"cpu": "512"}),
                      (("run_launcher", "config", "run_resources", "cpu"), 512)):
        config = _blocks(PRODUCTION_YAML)
        _set(config, path, bad)
        broken = tmp_path / "broken.yaml"
        broken.write_text(yaml.safe_dump(config))
        ref = _instance_ref(broken, tmp_path / f"home_{len(path)}")
        with pytest.raises(DagsterInvalidConfigError):
            _processed(ref.run_launcher_data)


def test_each_run_gets_the_configured_task_size() -> None:
    config = _blocks(PRODUCTION_YAML)["run_launcher"]["config"]
    assert config["run_resources"] == {"cpu": "512", "memory": "1024"}
    assert config["task_definition"] == {"env": "DAGSTER_RUN_TASK_DEFINITION"}
    # dagster-aws applies env_vars and secrets only to task definitions it registers itself; with a
    # task_definition given they would be silently ignored, so the run task definition carries them.
    assert not {"env_vars", "secrets"} & set(config)
    assert config["secrets_tag"] is None


def _with_local_storage(production: InstanceRef, local: InstanceRef, keep_launcher: bool = False) -> InstanceRef:
    """The production instance with the local one's SQLite storage, compute logs (and launcher)."""
    fields = ["storage_data", "run_storage_data", "event_storage_data", "schedule_storage_data",
              "compute_logs_data", "local_artifact_storage_data", "scheduler_data"]
    return production._replace(**{field: getattr(local, field)
                                   for field in fields + ([] if keep_launcher else ["run_launcher_data"])})


def test_the_ecs_launcher_sizes_each_run_and_a_tag_overrides_it(
        production_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of the real code location launched the way the daemon launches them: the RunTask request has the
    run task definition, the daemon's cluster and network, 0.5 vCPU / 1 GiB unless the run's `ecs/cpu` and
    `ecs/memory` tags say otherwise, and the command `dagster api execute_run …` for the image's entrypoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")  # moto's fake account; nothing leaves the process
    secrets_listed = []
    monkeypatch.setattr("dagster_aws.ecs.container_context.get_tagged_secrets",
                        lambda *args: secrets_listed.append(args) or {})
    requests = []
    with mock_aws():
        ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="dagster", Description="dagster", VpcId=vpc)["GroupId"]
        eni = ec2.create_network_interface(SubnetId=subnet, Groups=[group])["NetworkInterface"]["NetworkInterfaceId"]
        ecs.create_cluster(clusterName="dagster")
        task_definition = ecs.register_task_definition(
            family="shopify-pipeline-run", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="512",
            memory="1024", containerDefinitions=[{"name": "run", "image": "acme/shopify-pipeline:1"}],
        )["taskDefinition"]["taskDefinitionArn"]
        # The daemon's own task, as ECS's task metadata endpoint and DescribeTasks describe it.
        daemon = {"taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/dagster/daemon", "launchType": "FARGATE",
                  "attachments": [{"type": "ElasticNetworkInterface", "details": [
                      {"name": "subnetId", "value": subnet}, {"name": "networkInterfaceId", "value": eni}]}]}
        monkeypatch.setattr(ecs_launcher, "get_current_ecs_task_metadata",
                            lambda: CurrentEcsTaskMetadata(cluster="dagster", task_arn=daemon["taskArn"]))
        monkeypatch.setattr(ecs_launcher, "get_current_ecs_task", lambda *args: daemon)

        local = _instance_ref(LOCAL_YAML, tmp_path / "local")
        production = _instance_ref(PRODUCTION_YAML, tmp_path / "production")
        on_ecs = _with_local_storage(production, local, keep_launcher=True)
        with warnings.catch_warnings(), DagsterInstance.from_ref(on_ecs) as instance:
            warnings.simplefilter("ignore", dg.BetaWarning)
            launcher = instance.run_launcher
            assert isinstance(launcher, ecs_launcher.EcsRunLauncher)
            assert launcher.task_definition == task_definition
            monkeypatch.setattr(launcher, "_run_task", lambda **request: requests.append(request) or {
                "taskArn": f"arn:aws:ecs:eu-west-1:123456789012:task/dagster/run{len(requests)}",
                "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/dagster"})
            with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(ROOT / "workspace.yaml")])) as workspace:
                context = workspace.create_request_context()
                repository = next(iter(context.get_code_location("shopify_pipeline").get_repositories().values()))
                job = repository.get_full_job("daily_sync")
                runs = []
                for user, size in (("alice", {}), ("bob", {"ecs/cpu": "1024", "ecs/memory": "4096"})):
                    run = create_run_for_test(
                        instance, job_name="daily_sync", remote_job_origin=job.get_remote_origin(),
                        job_code_origin=job.get_python_origin(),
                        tags={"shopify/user": user, "dagster/partition": user, **size})
                    instance.launch_run(run.run_id, context)
                    runs.append(run)

    run_task = ecs.meta.service_model.operation_model("RunTask").input_shape
    for run, request, (cpu, memory) in zip(runs, requests, (("512", "1024"), ("1024", "4096")), strict=True):
        validate_parameters(request, run_task)  # raises on a request ECS would refuse
        assert request["taskDefinition"] == task_definition
        assert (request["cluster"], request["launchType"]) == ("dagster", "FARGATE")
        assert request["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == [subnet]
        assert request["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] == [group]
        overrides = request["overrides"]
        assert (overrides["cpu"], overrides["memory"]) == (cpu, memory)
        (container,) = overrides["containerOverrides"]
        assert (container["name"], container["cpu"], container["memory"]) == ("run", int(cpu), int(memory))
        assert "environment" not in container  # the run task definition carries it
        assert container["command"][:3] == ["dagster", "api", "execute_run"]
        assert deserialize_value(container["command"][3], ExecuteRunArgs).run_id == run.run_id
    assert not secrets_listed


def _set(config: dict, path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        config = config.setdefault(key, {})
    config[path[-1]] = value


def _get(config: dict, path: tuple[str, ...]) -> object:
    for key in path:
        config = config[key]
    return config


def test_production_keeps_the_local_queue_concurrency_and_retry_rules() -> None:
    local, production = _blocks(LOCAL_YAML), _blocks(PRODUCTION_YAML)
    for path, (local_value, production_value) in DIFFERENCES.items():
        assert (_get(local, path), _get(production, path)) == (local_value, production_value), path
    without_differences = []
    for blocks in (copy.deepcopy(local), copy.deepcopy(production)):
        for path in DIFFERENCES:
            _set(blocks, path, "differs")
        without_differences.append(blocks)
    local, production = without_differences
    for block in ("run_coordinator", "concurrency", "run_retries", "telemetry"):
        assert production[block] == local[block], f"{block} drifted from the repository's dagster.yaml"


def test_both_instances_queue_runs_the_same_way(production_env: dict[str, str], tmp_path: Path) -> None:
    """Dagster's own reading of both files: the production settings on local storage and launcher."""
    local_ref = _instance_ref(LOCAL_YAML, tmp_path / "local")
    swapped = _with_local_storage(_instance_ref(PRODUCTION_YAML, tmp_path / "production"), local_ref)
    with DagsterInstance.from_ref(local_ref) as local, DagsterInstance.from_ref(swapped) as production:
        local_queue = local.get_concurrency_config().run_queue_config
        production_queue = production.get_concurrency_config().run_queue_config
        assert production_queue.tag_concurrency_limits == local_queue.tag_concurrency_limits
        assert {"key": "shopify/user", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in \
            production_queue.tag_concurrency_limits
        assert (local_queue.max_concurrent_runs, production_queue.max_concurrent_runs) == (10, 200)
        assert (local.global_op_concurrency_default_limit, production.global_op_concurrency_default_limit) == (4, 200)
        for instance in (local, production):
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
            assert not instance.run_retries_retry_on_asset_or_op_failure
            assert instance.scheduler.max_tick_retries == 3  # a failed daily tick is tried again
        assert production.run_monitoring_enabled and production.run_monitoring_start_timeout_seconds == 300


# docs/production.md ------------------------------------------------------------------------------


def test_the_doc_shows_exactly_the_tested_file() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", PRODUCTION_DOC.read_text(), re.S)
    assert blocks == [PRODUCTION_YAML.read_text()]


def test_the_doc_lists_the_differences_from_the_local_file() -> None:
    text = PRODUCTION_DOC.read_text()
    for path, (local_value, production_value) in DIFFERENCES.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{path[-1]}`")]
        assert rows, f"production.md has no row for `{path[-1]}`"
        assert f"| {local_value} | {production_value} |" in rows[0]
