"""The fault suite: kill -9 at random points, a fault matrix on both sides, and bad input.

Every scenario ends with DynamoDB equal to the simulator's source of truth (ids and content), or with a
clear typed error and nothing written wrongly.
"""

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.codec import GRAPHQL, REST
from shopify_pipeline.dynamo.state import CheckpointError, LeaseHeldError, checkpoint_key
from shopify_pipeline.shopify.errors import UnsafeUrlError
from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.dynamo_fault_proxy import DynamoFaultProxy
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, source_of_truth, stored

TOKEN = "shpat_fault_suite_secret"


@pytest.fixture(scope="module")
def sim():
    shops = [
        ShopConfig("matrix", TOKEN, orders=900, products=30, customers=40, seed=31, plan="plus"),
        ShopConfig("killme", TOKEN, orders=2500, seed=32, plan="plus", large_order_every=400,
                   faults=FaultConfig(latency_seconds=0.04)),
    ]
    with Simulator(shops, time_scale=10) as running:
        yield running


@pytest.fixture
def api(request):
    """The API the suite's users read through: GraphQL (the default) unless a test is parametrized with
    `@pytest.mark.parametrize("api", APIS, indirect=True)` to run on both."""
    return getattr(request, "param", GRAPHQL)


APIS = [GRAPHQL, REST]


@pytest.fixture
def service(settings, sim, monkeypatch, api):
    monkeypatch.setenv("FAULT_SUITE_TOKEN", TOKEN)
    for shop in ("matrix", "killme"):
        sim.set_faults(shop, FaultConfig(latency_seconds=0.04) if shop == "killme" else FaultConfig())
    svc = SyncService(SyncEngine(settings, FAST_SHOPIFY, SyncOptions(slices=3, min_records_to_slice=300)))
    svc.add_connection("user-matrix", sim.shop_url("matrix"), "env:FAULT_SUITE_TOKEN", api=api)
    svc.add_connection("user-killme", sim.shop_url("killme"), "env:FAULT_SUITE_TOKEN", api=api)
    return svc


def _equal_to_source(service, sim, user, shop, data_types=("orders",)):
    """The user's records equal the simulator's, as the user's API serves them."""
    api = service.engine.connections.get(user).api
    for data_type in data_types:
        truth = graphql_truth(sim, shop, data_type) if api == GRAPHQL else source_of_truth(sim, shop, data_type)
        assert stored(service, user, data_type) == truth, data_type


# Kill -9 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS, indirect=True)
def test_kill_9_at_ten_random_points_then_rerun_copies_everything_exactly(service, sim, settings):
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1", "SHOPIFY_PAGE_SIZE": "50",
           "FAULT_SUITE_TOKEN": TOKEN}
    command = [sys.executable, "-m", "shopify_pipeline.cli", "sync", "--user", "user-killme", "--type", "initial",
               "--data-types", "orders"]
    rng = random.Random(2026)
    stages = []
    for _ in range(10):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.2, 4.0))  # after start-up (about 1 s), anywhere in fetch, load or finish
        status = service.engine.state.get_status("user-killme").get("orders", {})
        stages.append(status.get("stage", "start"))
        process.send_signal(signal.SIGKILL)
        process.wait()
        service.clear_sync_status("user-killme", "orders", release_lease=True)
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    assert len(set(stages)) >= 2, f"kills should land in different stages: {stages}"
    _equal_to_source(service, sim, "user-killme", "killme")
    assert service.get_sync_status("user-killme")["dataTypes"]["orders"]["status"] == "completed"
    assert service.load_checkpoint("user-killme", "initial") == {}
    print("killed in stages:", stages)


# Shopify side ----------------------------------------------------------------------------------------

SHOPIFY_FAULTS = {
    "5xx with HTML bodies": FaultConfig(seed=1, error_500_rate=0.15, error_502_rate=0.1, error_503_rate=0.1,
                                        error_430_rate=0.05),
    "504 after a delay": FaultConfig(seed=2, error_504_rate=0.15, gateway_timeout_seconds=0.3),
    "hangs past the timeout": FaultConfig(seed=3, hang_rate=0.1, hang_seconds=3),
    "connection resets": FaultConfig(seed=4, reset_rate=0.2),
    "truncated and malformed JSON": FaultConfig(seed=5, truncate_rate=0.15, malformed_rate=0.15),
    "429 storm": FaultConfig(seed=6, rules=(FaultRule("429", times=25),)),
    "a page that never works": FaultConfig(seed=7, rules=(
        FaultRule("502", endpoint="orders", page=2, times=0),
        FaultRule("502", endpoint="graphql:orders", page=2, times=0),
    )),
}


@pytest.mark.parametrize("api", APIS, indirect=True)
@pytest.mark.parametrize("name", list(SHOPIFY_FAULTS))
def test_shopify_faults_lose_nothing(service, sim, name):
    sim.set_faults("matrix", SHOPIFY_FAULTS[name])
    first = service.initial_sync("user-matrix")
    if not first.success:  # whatever failed is recorded, then fetched again by a rerun
        failed = {t: r.failed_pages or r.error for t, r in first.data_types.items() if r.failed_pages or r.error}
        assert failed, "a failed sync says what failed"
        assert service.get_sync_status("user-matrix")["status"] == "failed"
        sim.set_faults("matrix", FaultConfig())
        assert service.initial_sync("user-matrix").success
    _equal_to_source(service, sim, "user-matrix", "matrix", ("orders", "products", "customers"))


def test_faults_changed_mid_sync(service, sim):
    def change_faults():
        for config in (FaultConfig(seed=8, error_503_rate=0.3), FaultConfig(seed=9, reset_rate=0.3), FaultConfig()):
            time.sleep(0.3)
            sim.set_faults("killme", replace(config, latency_seconds=0.04))

    changer = threading.Thread(target=change_faults)
    changer.start()
    first = service.initial_sync("user-killme", data_types=("orders",))
    changer.join()
    if not first.success:
        assert service.initial_sync("user-killme", data_types=("orders",)).success
    _equal_to_source(service, sim, "user-killme", "killme")


# DynamoDB side ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,options", [
    ("throttle", {"probability": 0.5}),
    ("unprocessed", {"probability": 0.6, "keep_fraction": 0.3}),
    ("drop", {"probability": 0.25}),
    ("error_500", {"probability": 0.5}),
])
def test_dynamodb_faults_lose_nothing_and_failed_batches_are_recovered(settings, sim, kind, options):
    with DynamoFaultProxy(settings.dynamodb_endpoint_url, seed=5) as proxy:
        proxied = replace(settings, dynamodb_endpoint_url=proxy.endpoint_url, unprocessed_retries=2,
                          unprocessed_backoff_seconds=0.001)
        from botocore.config import Config

        few_retries = dynamodb_client(proxied, Config(retries={"total_max_attempts": 2, "mode": "standard"}))
        engine = SyncEngine(proxied, FAST_SHOPIFY, SyncOptions(slices=2, min_records_to_slice=300),
                            dynamodb=dynamodb_client(proxied))
        service = SyncService(engine)
        service.add_connection("user-ddb", sim.shop_url("matrix"), f"literal:{TOKEN}")
        sim.set_faults("matrix", FaultConfig())
        engine.writer = type(engine.writer)(few_retries, proxied)  # only the record writes see the faults
        proxy.add_fault(kind, **options)
        first = service.initial_sync("user-ddb", data_types=("orders",))
        proxy.clear_faults()
        saved = first.data_types["orders"].failed_batches
        if saved:
            assert not first.success
            retried = service.retry_failed_batches("user-ddb", "initial", "orders")
            assert retried.success and retried.retried == len(saved)
        if first.data_types["orders"].error:
            # Saving a failed batch can itself be throttled: the load stops with a transient error, and
            # what it had not loaded stays staged for the next run, which loads it.
            assert "DynamoDB" in first.data_types["orders"].error
            assert service.initial_sync("user-ddb", data_types=("orders",)).success
        assert proxy.stats["BatchWriteItem"].faults[kind] > 0, "the fault really happened"
        _equal_to_source(service, sim, "user-ddb", "matrix")
        assert service.get_sync_status("user-ddb")["dataTypes"]["orders"]["status"] == "completed"


# Bad input -------------------------------------------------------------------------------------------

def test_an_invalid_shop_domain_is_refused_before_anything_is_written(service):
    with pytest.raises(UnsafeUrlError):
        service.add_connection("user-evil", "https://evil.example.com", "env:FAULT_SUITE_TOKEN")
    assert "user-evil" not in {c.user_id for c in service.list_connections()}


def test_a_corrupt_or_foreign_checkpoint_stops_the_sync_with_the_fix(service, settings):
    client = service.engine.dynamodb
    key = {"userId": {"S": "user-matrix"}, "syncType": {"S": checkpoint_key("manual", "orders")}}
    client.put_item(TableName=settings.tables.checkpoints,
                    Item={**key, "state": {"S": "{}"}, "version": {"N": "3"}, "schemaVersion": {"N": "7"}})
    with pytest.raises(CheckpointError, match="checkpoint clear --user user-matrix --sync-type manual"):
        service.engine.fetch("user-matrix", "manual", "orders")
    assert stored(service, "user-matrix", "orders") == {}, "nothing written"
    assert service.clear_checkpoint("user-matrix", "manual") == ["orders"]
    assert service.manual_sync("user-matrix", data_types=("orders",)).success


def test_two_concurrent_syncs_of_one_user_never_run_together(service, sim):
    sim.set_faults("killme", FaultConfig(latency_seconds=0.2))
    outcome = {}

    def first():
        outcome["first"] = service.engine.fetch("user-killme", "initial", "orders")

    runner = threading.Thread(target=first)
    runner.start()
    time.sleep(1.0)
    other = SyncService(SyncEngine(service.engine.settings, FAST_SHOPIFY))
    with pytest.raises(LeaseHeldError, match="already running"):
        other.engine.fetch("user-killme", "initial", "orders")
    with pytest.raises(LeaseHeldError):
        other.engine.load("user-killme", "initial", "orders")
    runner.join()
    sim.set_faults("killme", FaultConfig(latency_seconds=0.04))
    assert service.engine.load("user-killme", "initial", "orders").finished
    _equal_to_source(service, sim, "user-killme", "killme")


def test_no_log_line_ever_holds_the_token(service, sim, caplog):
    caplog.set_level(logging.DEBUG, logger="shopify_pipeline")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    sim.set_faults("matrix", FaultConfig(seed=11, error_503_rate=0.2, reset_rate=0.1))
    service.initial_sync("user-matrix", data_types=("orders",))
    service.add_connection("user-revoked", sim.shop_url("matrix"), "literal:shpat_not_valid")
    service.initial_sync("user-revoked", data_types=("orders",))
    status = str(service.get_sync_status("user-revoked")) + str(service.get_sync_status("user-matrix"))
    for text in (caplog.text, status):
        assert TOKEN not in text and "shpat_not_valid" not in text
