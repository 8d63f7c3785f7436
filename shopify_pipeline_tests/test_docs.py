"""Keep docs/*.md true to the code: commands parse, env vars exist, IAM actions are the ones called."""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
from botocore import xform_name
from botocore.session import get_session

from shopify_pipeline.cli import build_parser
from shopify_pipeline.settings import CHECKPOINT_TTL_SECONDS, Settings, ShopifySettings
from shopify_pipeline.sync.engine import SyncOptions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "shopify_pipeline"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


def _source_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "simulator" not in p.parts]


# Commands ----------------------------------------------------------------------------------------


def _commands(text: str) -> list[str]:
    """Every `shopify-pipeline …` line of the fenced code blocks, continuation lines joined."""
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("shopify-pipeline "):
                commands.append(line)
    return commands


def _doc_commands() -> list[tuple[str, str]]:
    pages = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
    return [(path.name, command) for path in pages for command in _commands(path.read_text())]


def test_docs_show_commands() -> None:
    names = {name for name, _ in _doc_commands()}
    assert {"runbook.md", "production.md", "configuration.md"} <= names


@pytest.mark.parametrize(("doc", "command"), _doc_commands(), ids=[f"{d}: {c}" for d, c in _doc_commands()])
def test_documented_command_parses(doc: str, command: str) -> None:
    argv = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {error.code})")
    assert callable(args.func)


def test_runbook_names_every_recovery_command() -> None:
    commands = [c.split()[1] for c in _commands(_doc("runbook.md"))]
    for name in ("status", "clear", "sync", "failed-batches", "retry-failed", "checkpoint", "users"):
        assert name in commands, f"runbook.md shows no `shopify-pipeline {name}` command"


# Environment variables ---------------------------------------------------------------------------


def _documented_env_vars() -> set[str]:
    """First-column names of the tables under '## Environment variables' in configuration.md."""
    text = _doc("configuration.md")
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if match and ENV_NAME.match(match.group(1)):
            names.add(match.group(1))
    return names


def _string_constants(path: Path) -> set[str]:
    return {
        node.value for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def _env_vars_read_by_code() -> set[str]:
    """Names the settings and resources modules read (string constants that look like env vars), plus
    every os.environ/getenv/EnvVar lookup in the package."""
    names = set()
    for module in ("settings.py", "defs/resources.py", "dynamo/local.py"):
        names |= {s for s in _string_constants(PACKAGE / module) if ENV_NAME.match(s)}
    lookup = re.compile(r"""(?:environ\.get|getenv|EnvVar|environ)\(?\[?\s*["']([A-Z][A-Z0-9_]+)["']""")
    for path in _source_files():
        names |= set(lookup.findall(path.read_text()))
    return names


def test_documented_env_vars_exist_in_code() -> None:
    documented = _documented_env_vars()
    assert len(documented) >= 15
    constants = set().union(*(_string_constants(p) for p in _source_files()))
    missing = sorted(documented - constants)
    assert not missing, f"configuration.md documents variables no code reads: {missing}"


def test_env_vars_read_by_code_are_documented() -> None:
    read = _env_vars_read_by_code()
    assert {"SYNC_CHECKPOINTS_TABLE", "SHOPIFY_PIPELINE_ENV", "SHOPIFY_PAGE_SIZE", "SHOPIFY_PIPELINE_CACHE"} <= read
    missing = sorted(read - _documented_env_vars())
    assert not missing, f"configuration.md does not document: {missing}"


# Values in code only -----------------------------------------------------------------------------


def _row(text: str, name: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| `{name}`")]
    assert rows, f"no table row for `{name}`"
    return rows[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Settings.batch_size", f"| {Settings().batch_size} |"),
        ("Settings.write_workers", f"| {Settings().write_workers} |"),
        ("Settings.unprocessed_retries", f"| {Settings().unprocessed_retries} |"),
        ("Settings.lease_seconds", f"| {Settings().lease_seconds} |"),
        ("Settings.max_item_bytes", f"| {Settings().max_item_bytes:,} |".replace(",", " ")),
        ("CHECKPOINT_TTL_SECONDS", f"| {CHECKPOINT_TTL_SECONDS // 86400} days |"),
        ("retries", f"| {ShopifySettings().retries} |"),
        ("min_page_size", f"| {ShopifySettings().min_page_size} |"),
        ("max_throttle_waits", f"| {ShopifySettings().max_throttle_waits} |"),
        ("slices", f"| {SyncOptions().slices} |"),
        ("min_records_to_slice", f"| {SyncOptions().min_records_to_slice} |"),
    ],
)
def test_code_only_values_match(name: str, value: str) -> None:
    assert value in _row(_doc("configuration.md"), name)


def test_env_defaults_match() -> None:
    text = _doc("configuration.md")
    shopify, settings = ShopifySettings(), Settings()
    assert f"| `{shopify.api_version}` |" in _row(text, "SHOPIFY_API_VERSION")
    assert f"| `{shopify.page_size}` |" in _row(text, "SHOPIFY_PAGE_SIZE")
    assert f"| `{shopify.timeout_seconds:g}` |" in _row(text, "SHOPIFY_TIMEOUT_SECONDS")
    assert f"| `{shopify.pacing}` |" in _row(text, "SHOPIFY_PACING")
    assert f"| `{settings.aws_region}` |" in _row(text, "AWS_REGION")
    assert f"| `{settings.document_format}` |" in _row(text, "SHOPIFY_DOCUMENT_FORMAT")
    assert f"| `{settings.tables.checkpoints}` |" in _row(text, "SYNC_CHECKPOINTS_TABLE")
    assert f"| `{settings.tables.documents}` |" in _row(text, "SHOPIFY_DOCUMENT_CHUNKS_TABLE")


# IAM ---------------------------------------------------------------------------------------------


def _dynamodb_actions_called() -> set[str]:
    """DynamoDB API actions the package calls: client methods, `_call("op")` names, paginators, waiters."""
    model = get_session().get_service_model("dynamodb")
    snake = {xform_name(op): op for op in model.operation_names}
    text = "\n".join(p.read_text() for p in _source_files())
    used = {op for name, op in snake.items() if re.search(rf"""(\.{name}\(|["']{name}["'])""", text)}
    if re.search(r"""get_waiter\(\s*["']table_exists["']""", text):
        used.add("DescribeTable")
    return {f"dynamodb:{op}" for op in used}


def _policy_actions() -> set[str]:
    actions = set()
    for block in re.findall(r"```json\n(.*?)```", _doc("production.md"), re.S):
        for statement in json.loads(block)["Statement"]:
            value = statement["Action"]
            actions |= {value} if isinstance(value, str) else set(value)
    return actions


def test_iam_policy_lists_exactly_the_actions_called() -> None:
    called = _dynamodb_actions_called()
    if "dynamodb:TransactWriteItems" in called:
        # IAM authorizes a transaction's parts (PutItem, UpdateItem, DeleteItem) and its ConditionCheck.
        called = called - {"dynamodb:TransactWriteItems"} | {"dynamodb:ConditionCheckItem"}
    assert {"dynamodb:BatchWriteItem", "dynamodb:Query", "dynamodb:CreateTable"} <= called
    test_only = {"dynamodb:DeleteTable"}  # delete_tables: tests only, documented as such
    documented = {a for a in _policy_actions() if a.startswith("dynamodb:")}
    assert documented == called - test_only


def test_iam_policy_covers_secrets_manager_tokens() -> None:
    assert "get_secret_value" in (PACKAGE / "sync" / "tokens.py").read_text()
    assert "secretsmanager:GetSecretValue" in _policy_actions()


# dagster.yaml example ----------------------------------------------------------------------------


def test_production_dagster_yaml_matches_dagster_schema(tmp_path: Path) -> None:
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.ecs import EcsRunLauncher

    blocks = re.findall(r"```yaml\n(.*?)```", _doc("production.md"), re.S)
    assert len(blocks) == 1
    (tmp_path / "dagster.yaml").write_text(blocks[0])
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    assert validate_config(EcsRunLauncher.config_type(), config["run_launcher"]["config"]).success
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "shopify/user", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


# Paths -------------------------------------------------------------------------------------------


def test_source_paths_in_docs_exist() -> None:
    for name in ("architecture.md", "configuration.md", "runbook.md", "production.md"):
        for path in re.findall(r"shopify_pipeline/[\w/]+\.py", _doc(name)):
            assert (ROOT / path).is_file(), f"{name} names {path}, which does not exist"
