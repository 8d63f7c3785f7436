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

from shopify_pipeline.defs.assets import pages_key, step_key, sync_run_config
from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.tables import create_tables
from shopify_pipeline.settings import Settings, ShopifySettings
from shopify_pipeline.simulator import FaultConfig, FaultRule
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
    # REST: the recovery test counts the requests of one listing (GraphQL's endpoint serves every listing).
    SyncService(engine).add_connection("user-small", sim.shop_url("small"), "literal:shpat_small", api="rest")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("shopify_users", ["user-small"])
    os.environ["SHOPIFY_PIPELINE_TEST_DAGSTER_HOME"] = str(home)  # the tests read the run's events there
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "SHOPIFY_PIPELINE_ENV": "local",
           "AWS_ENDPOINT_URL_DYNAMODB": dev_settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": table_prefix(dev_settings), "SHOPIFY_PAGE_SIZE": "20"}
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

    assert wait_for(lambda: _run_finished(client, run_id), 120, "the run to finish") == dg.DagsterRunStatus.SUCCESS

    run = graphql(port, MATERIALIZATIONS, {"runId": run_id})["runOrError"]
    assert run["status"] == "SUCCESS"
    print(f"full_sync of user-small: {run['endTime'] - run['startTime']:.1f} s from start to end of the run")
    by_asset = {tuple(m["assetKey"]["path"]): m for m in run["assetMaterializations"]}
    assert len(by_asset) == 6 and all(m["partition"] == "user-small" for m in by_asset.values())
    for data_type in ("orders", "products", "customers"):
        entries = {e["label"]: e for e in by_asset[("dynamodb", data_type)]["metadataEntries"]}
        assert entries["records_written_this_run"]["intValue"] == len(sim.records("small", data_type))
        assert entries["dagster/row_count"]["intValue"] == len(sim.records("small", data_type))
        assert entries["failed_batches"]["intValue"] == 0
        assert "updated_at" in entries["preview"]["mdStr"]


def test_the_asset_graph_shows_in_a_headless_browser(dagster_dev, tmp_path):
    port = dagster_dev
    if not os.path.exists(CHROMIUM):
        pytest.skip("install Debian's chromium to run this: apt-get install -y chromium chromium-driver")
    screenshot = tmp_path / "asset_graph.png"
    _screenshot(port, "/asset-groups/", screenshot, tmp_path / "chromium")
    assert screenshot.stat().st_size > 50_000
    kept = os.environ.get("SHOPIFY_PIPELINE_SCREENSHOT")
    if kept:  # where to keep the picture for a person to look at
        shutil.copy(screenshot, kept)


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""

BACKFILL_STATUS = """
query BackfillStatus($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs(limit: 20) { runId status } }
  }
}
"""

ALL_ASSETS = [{"path": ["shopify", f"{d}_pages"]} for d in ("orders", "products", "customers")] + [
    {"path": ["dynamodb", d]} for d in ("orders", "products", "customers")]


def _run_finished(client: DagsterGraphQLClient, run_id: str):
    try:
        status = client.get_run_status(run_id)
    except DagsterGraphQLClientError:
        return None
    return status if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                dg.DagsterRunStatus.CANCELED) else None


def _events(run_id: str, kind: dg.DagsterEventType) -> list:
    home = os.environ["SHOPIFY_PIPELINE_TEST_DAGSTER_HOME"]
    with dg.DagsterInstance.from_config(home) as instance:
        return [e.dagster_event for e in instance.all_logs(run_id, of_type=kind)]


def _screenshot(port: int, path: str, picture: Path, profile: Path) -> None:
    """A headless-Chromium picture of a UI page (nothing without Chromium: the browser test says so)."""
    if not os.path.exists(CHROMIUM):
        return
    graphql(port, "mutation { setNuxSeen }")  # the first-visit community dialog would cover the page
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={picture}", "--window-size=1400,900",
         "--virtual-time-budget=15000", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, timeout=90, check=True,
    )
    assert picture.read_bytes().startswith(b"\x89PNG")
    kept = os.environ.get("SHOPIFY_PIPELINE_SCREENSHOT_DIR")
    if kept:
        shutil.copy(picture, Path(kept) / picture.name)


def test_a_failed_daily_run_is_recovered_by_a_backfill_without_config(dagster_dev, dev_settings, sim, tmp_path):
    """As a data engineer would: the scheduled daily run fails on a page; the failing run shows the failed
    check and says what failed first; "backfill failed partitions" with no config fetches only what is
    missing, finishes the daily checkpoint, and every check passes."""
    port = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    service = SyncService(SyncEngine(dev_settings, ShopifySettings(allow_local_shops=True)))
    assert service.sync("user-small").success  # synced before: the next sync of every data type is daily
    sim.update_records("small", "orders", n=60, seed=3)  # 60 changed orders: three daily pages of 20
    sim.set_faults("small", FaultConfig(rules=(FaultRule("502", endpoint="orders", page=2, times=0),)))

    daily = client.submit_job_execution("daily_sync", run_config=sync_run_config("daily"),
                                        tags={"dagster/partition": "user-small", "shopify/user": "user-small"})
    assert wait_for(lambda: _run_finished(client, daily), 240, "the daily run") == dg.DagsterRunStatus.FAILURE

    fetch_step = step_key(pages_key("orders"))
    [failure] = [e for e in _events(daily, dg.DagsterEventType.STEP_FAILURE) if e.step_key == fetch_step]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("1 page(s) of orders failed after retries (slice 0 page 2: ")  # our words first
    checks = [e.event_specific_data for e in _events(daily, dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    failed_checks = [c for c in checks if not c.passed]
    assert failed_checks and {c.check_name for c in failed_checks} == {"no_failed_pages"}
    assert {c.partition for c in checks} == {"user-small"}
    assert failed_checks[-1].metadata["failed_pages"].value == 1
    staged = service.engine.state.load_checkpoint("user-small", "daily", "orders").state["pages"]
    assert staged == 1
    # The run-failure sensor (in dagster dev's daemon) writes the failure onto the user's status.
    recorded = wait_for(lambda: service.get_sync_status("user-small").get("lastFailedRun"), 120,
                        "the run-failure sensor")
    assert recorded["runId"] == daily and "page(s) of orders failed" in recorded["message"]
    _screenshot(port, "/asset-groups/", tmp_path / "1_after_partial_failure.png", tmp_path / "chromium")

    sim.set_faults("small", FaultConfig())
    before = sim.stats("small")["requests"].get("orders", 0)
    launched = graphql(port, BACKFILL, {"params": {"assetSelection": ALL_ASSETS, "partitionNames": ["user-small"],
                                                   "fromFailure": False}})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill = launched["backfillId"]

    def backfill_done():
        answer = graphql(port, BACKFILL_STATUS, {"id": backfill})["partitionBackfillOrError"]
        return answer if answer["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

    done = wait_for(backfill_done, 300, "the backfill")
    assert done["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), done
    run_ids = [run["runId"] for run in done["runs"]]
    assert run_ids and all(run["status"] == "SUCCESS" for run in done["runs"]), done

    fetched = [e.event_specific_data.materialization for run in run_ids
               for e in _events(run, dg.DagsterEventType.ASSET_MATERIALIZATION)
               if e.event_specific_data.materialization.asset_key == pages_key("orders")]
    [orders_fetch] = fetched
    meta = {name: value.value for name, value in orders_fetch.metadata.items()}
    assert meta["sync_type"] == "daily" and meta["resumed"]  # auto resumed the daily sync, no config typed
    # Only the pages that were missing were asked for: the failed page 2 and the ones after it.
    assert meta["pages_this_run"] == meta["pages"] - staged >= 2
    assert sim.stats("small")["requests"]["orders"] - before == meta["pages_this_run"]
    assert service.engine.state.load_checkpoint("user-small", "daily", "orders") is None  # finished
    assert service.get_sync_status("user-small")["dataTypes"]["orders"]["status"] == "completed"
    recovered = [e.event_specific_data for run in run_ids
                 for e in _events(run, dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    assert {"no_failed_pages", "no_failed_batches"} <= {c.check_name for c in recovered}
    assert all(c.passed for c in recovered), [(c.check_name, c.metadata) for c in recovered if not c.passed]
    _screenshot(port, "/asset-groups/", tmp_path / "2_after_recovery_backfill.png", tmp_path / "chromium")


def test_a_revoked_user_fails_alone_and_leaves_the_other_users_checks_green(dagster_dev, dev_settings, sim,
                                                                             tmp_path):
    port = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    with dg.DagsterInstance.from_config(os.environ["SHOPIFY_PIPELINE_TEST_DAGSTER_HOME"]) as instance:
        instance.add_dynamic_partitions("shopify_users", ["user-revoked"])  # before the sensor sees it
    service = SyncService(SyncEngine(dev_settings, ShopifySettings(allow_local_shops=True)))
    service.add_connection("user-revoked", sim.shop_url("small"), "literal:shpat_revoked")
    run = client.submit_job_execution("full_sync", run_config=sync_run_config("auto"),
                                      tags={"dagster/partition": "user-revoked", "shopify/user": "user-revoked"})
    assert wait_for(lambda: _run_finished(client, run), 120, "the revoked user's run") == dg.DagsterRunStatus.FAILURE
    failures = _events(run, dg.DagsterEventType.STEP_FAILURE)
    assert failures and all(not f.step_failure_data.user_failure_data or
                            f.step_failure_data.user_failure_data.metadata["reason"].value == "invalid_token"
                            for f in failures)
    assert not _events(run, dg.DagsterEventType.STEP_UP_FOR_RETRY)  # a 401 is not retried
    # The checks are per user: the revoked user's run evaluated none, so no other user's result changed.
    assert not [e for e in _events(run, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
                if e.event_specific_data.partition != "user-revoked"]
    _screenshot(port, "/asset-groups/", tmp_path / "3_one_user_revoked.png", tmp_path / "chromium")
    _screenshot(port, "/assets/shopify/orders_pages?view=checks", tmp_path / "4_orders_pages_checks.png",
                tmp_path / "chromium")
