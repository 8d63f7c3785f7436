"""`dagster dev` as users start it: a run launched through GraphQL, its metadata read back, the UI in a browser."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from shopify_pipeline.defs.assets import sync_run_config
from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.tables import create_tables
from shopify_pipeline.settings import Settings, ShopifySettings
from shopify_pipeline.sync.engine import SyncEngine
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.defs.conftest import table_prefix

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"

MATERIALIZATIONS = """
query RunMaterializations($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      startTime
      endTime
      assetMaterializations {
        assetKey { path }
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on MarkdownMetadataEntry { mdStr }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def dev_settings(dynamodb_endpoint) -> Settings:
    """Tables of their own for this module (one `dagster dev` serves its tests)."""
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint}).with_prefix(
        f"d{uuid.uuid4().hex[:8]}_")
    create_tables(dynamodb_client(settings), settings.tables)
    return settings


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory, dev_settings, sim):
    """`dagster dev` on a free port with the shipped dagster.yaml, DynamoDB Local and the simulator.

    The user's partition exists before it starts, so the connections sensor has nothing to launch."""
    tmp_path = tmp_path_factory.mktemp("dagster_dev")
    engine = SyncEngine(dev_settings, ShopifySettings(allow_local_shops=True))
    SyncService(engine).add_connection("user-small", sim.shop_url("small"), "literal:shpat_small")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("shopify_users", ["user-small"])
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "SHOPIFY_PIPELINE_ENV": "local",
           "AWS_ENDPOINT_URL_DYNAMODB": dev_settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": table_prefix(dev_settings)}
    log = (tmp_path / "dagster_dev.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
         "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: _location_loaded(port) or process.poll() is not None, 90, "dagster dev to load the code")
        assert process.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
        yield port
    finally:
        # dagster dev shuts its webserver, daemon and code server down on SIGINT.
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _location_loaded(port: int) -> bool:
    try:
        answer = graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
    except requests.RequestException:
        return False
    entries = answer["workspaceOrError"]["locationEntries"]
    return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}},
                             timeout=10)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def test_a_run_launched_through_graphql_succeeds_and_its_metadata_is_readable(dagster_dev, sim):
    port = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution(
        "full_sync", run_config=sync_run_config("initial"),
        tags={"dagster/partition": "user-small", "shopify/user": "user-small"},
    )

    def finished():
        try:
            status = client.get_run_status(run_id)
        except DagsterGraphQLClientError:
            return None
        return status if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                    dg.DagsterRunStatus.CANCELED) else None

    assert wait_for(finished, 120, "the run to finish") == dg.DagsterRunStatus.SUCCESS

    run = graphql(port, MATERIALIZATIONS, {"runId": run_id})["runOrError"]
    assert run["status"] == "SUCCESS"
    print(f"full_sync of user-small: {run['endTime'] - run['startTime']:.1f} s from start to end of the run")
    by_asset = {tuple(m["assetKey"]["path"]): m for m in run["assetMaterializations"]}
    assert len(by_asset) == 6 and all(m["partition"] == "user-small" for m in by_asset.values())
    for data_type in ("orders", "products", "customers"):
        entries = {e["label"]: e for e in by_asset[(f"dynamodb_{data_type}",)]["metadataEntries"]}
        assert entries["records"]["intValue"] == len(sim.records("small", data_type))
        assert entries["failed_batches"]["intValue"] == 0
        assert "updated_at" in entries["preview"]["mdStr"]


def test_the_asset_graph_shows_in_a_headless_browser(dagster_dev, tmp_path):
    port = dagster_dev
    if not os.path.exists(CHROMIUM):
        pytest.skip("install Debian's chromium to run this: apt-get install -y chromium chromium-driver")
    graphql(port, "mutation { setNuxSeen }")  # the first-visit community dialog would cover the graph
    screenshot = tmp_path / "asset_graph.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={screenshot}", "--window-size=1400,900",
         "--virtual-time-budget=15000", f"http://127.0.0.1:{port}/asset-groups/"],
        capture_output=True, timeout=90, check=True,
    )
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000
    kept = os.environ.get("SHOPIFY_PIPELINE_SCREENSHOT")
    if kept:  # where to keep the picture for a person to look at
        shutil.copy(screenshot, kept)
