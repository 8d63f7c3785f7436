"""Fixtures for engine tests: the simulator (a real HTTP server) and DynamoDB Local together."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shopify_pipeline.dynamo.codec import record_key
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.simulator import FaultConfig, ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService

FAST_SHOPIFY = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=2.0)

SHOPS = [
    ShopConfig("acme", "shpat_acme", orders=1200, products=40, customers=60, seed=11, plan="plus",
               large_order_every=500, large_order_line_items=700),
    ShopConfig("small", "shpat_small", orders=60, products=5, customers=7, seed=12, plan="plus"),
    ShopConfig("frozen", "shpat_frozen", orders=5, state="frozen"),
    ShopConfig("catalog", "shpat_catalog", orders=5, products=30, customers=5, seed=13, plan="plus",
               large_product_every=10, large_product_variants=300),
    ShopConfig("recent", "shpat_recent", orders=30, scopes=("read_orders", "read_products", "read_customers"),
               history_days=200, plan="plus"),
]


@pytest.fixture(scope="module")
def sim():
    with Simulator(SHOPS, time_scale=10) as running:
        yield running


@pytest.fixture
def service(settings, sim):
    for shop in SHOPS:
        sim.set_faults(shop.name, FaultConfig())
    engine = SyncEngine(settings, FAST_SHOPIFY, SyncOptions(slices=4, min_records_to_slice=500))
    svc = SyncService(engine)
    for shop in SHOPS:  # user-… read through REST (the option these tests grew up on), gql-… through GraphQL
        svc.add_connection(f"user-{shop.name}", sim.shop_url(shop.name), f"literal:{shop.token}", api="rest")
        svc.add_connection(f"gql-{shop.name}", sim.shop_url(shop.name), f"literal:{shop.token}")
    return svc


def source_of_truth(sim, shop: str, data_type: str) -> dict[int, dict]:
    """The simulator's records as REST serves them, fractions as Decimal like ours (its floats print back exactly)."""
    return {doc["id"]: doc for doc in (parse_json(json.dumps(r)) for r in sim.records(shop, data_type, rest=True))}


def stored(service, user: str, data_type: str) -> dict[int, dict]:
    """The user's stored documents by their numeric id (REST's id, GraphQL's legacyResourceId)."""
    table = RecordTable(service.engine.dynamodb, service.engine.settings, data_type)
    docs = list(table.documents(user))
    assert len(docs) == len({record_key(d) for d in docs})
    return {record_key(doc): doc for doc in docs}


@pytest.fixture
def slow_sim():
    """One shop of 3 000 orders answering a little slowly: a sync takes long enough to be killed midway."""
    shop = ShopConfig("big", "shpat_big", orders=3000, seed=21, plan="plus",
                      faults=FaultConfig(latency_seconds=0.05))
    with Simulator([shop], time_scale=10) as running:
        yield running


def sync_process(settings, user: str, **env: str) -> subprocess.Popen:
    """`shopify-pipeline sync` of the user's orders (initial) in a process of its own, on the test's tables."""
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    environ = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
               "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "shopify_pipeline.cli", "sync", "--user", user,
                             "--type", "initial", "--data-types", "orders"], env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_at_page(engine, process: subprocess.Popen, user: str, page: int, seconds: float = 60) -> bool:
    """SIGKILL `process` once the user's orders status reaches `page` (unless it ended first), then hand its
    lease over as the runbook's `clear --release-lease` does. Returns whether it was killed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if engine.state.get_status(user).get("orders", {}).get("page", 0) >= page:
            break
        time.sleep(0.02)
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    SyncService(engine).clear_sync_status(user, "orders", release_lease=True)
    return killed
