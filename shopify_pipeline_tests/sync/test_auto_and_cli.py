"""`auto`, the default sync type, and the CLI's defaults: against the simulator and DynamoDB Local."""

import os
import subprocess
import sys

from shopify_pipeline.simulator import FaultConfig, FaultRule
from shopify_pipeline_tests.sync.conftest import source_of_truth, stored


def _cli(settings, *argv: str) -> subprocess.CompletedProcess:
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1"}
    return subprocess.run([sys.executable, "-m", "shopify_pipeline.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=180)


def test_auto_is_initial_then_daily_and_resumes_an_unfinished_sync(service, sim):
    engine = service.engine
    assert engine.resolve_sync_type("user-small", "orders", "auto") == "initial"  # never synced
    first = service.sync("user-small", data_types=("orders",))
    assert first.success and first.data_types["orders"].sync_type == "initial"
    assert engine.resolve_sync_type("user-small", "orders", "auto") == "daily"  # synced before

    sim.update_records("small", "orders", n=30, seed=4)
    sim.set_faults("small", FaultConfig(rules=(FaultRule("502", endpoint="orders", page=1, times=0),)))
    failed = service.sync("user-small", data_types=("orders",))
    assert not failed.success and failed.data_types["orders"].sync_type == "daily"
    assert engine.state.load_checkpoint("user-small", "daily", "orders") is not None  # unfinished: auto resumes it

    sim.set_faults("small", FaultConfig())
    before = sim.stats("small")["requests"]["orders"]
    resumed = service.sync("user-small", data_types=("orders",))
    assert resumed.success and resumed.data_types["orders"].sync_type == "daily"
    assert sim.stats("small")["requests"]["orders"] - before == resumed.data_types["orders"].pages_fetched_this_run
    assert engine.state.load_checkpoint("user-small", "daily", "orders") is None
    assert stored(service, "user-small", "orders") == source_of_truth(sim, "small", "orders")


def test_the_cli_syncs_with_auto_by_default_and_status_shows_the_last_runs_requests(service, sim, settings):
    done = _cli(settings, "sync", "--user", "user-small", "--data-types", "products")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "auto sync of user-small: succeeded" in done.stdout and "products (initial)" in done.stdout
    status = _cli(settings, "status", "--user", "user-small")
    assert "last run: " in status.stdout and " retries, " in status.stdout and "throttled waited out" in status.stdout


def test_a_misspelt_data_type_is_a_usage_error_before_anything_runs(service, sim, settings):
    before = sim.stats("small")["requests"]
    done = _cli(settings, "sync", "--user", "user-small", "--data-types", "order")
    assert done.returncode == 2
    assert "unknown data type(s) 'order'" in done.stderr and "orders,products,customers" in done.stderr
    assert sim.stats("small")["requests"] == before
    assert service.get_sync_status("user-small")["status"] == "never_synced"


def test_connecting_another_shop_to_a_user_needs_replace_and_says_what_happens(service, sim, settings):
    assert service.sync("user-small", data_types=("products",)).success
    refused = _cli(settings, "users", "add", "--user", "user-small", "--shop", sim.shop_url("acme"),
                   "--token-ref", "literal:shpat_acme")
    assert refused.returncode == 2
    assert "--replace" in refused.stderr and "old shop's records stay" in refused.stderr
    assert service.engine.connections.get("user-small").high_water  # untouched
    replaced = _cli(settings, "users", "add", "--user", "user-small", "--shop", sim.shop_url("acme"),
                    "--token-ref", "literal:shpat_acme", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    connection = service.engine.connections.get("user-small")
    assert connection.shop == sim.shop_url("acme") and connection.high_water == {}
    same = _cli(settings, "users", "add", "--user", "user-small", "--shop", sim.shop_url("acme"),
                "--token-ref", "literal:shpat_acme")
    assert same.returncode == 0  # the same shop again (a new token) needs no --replace
