"""Fixtures for the Dagster layer: the simulator, DynamoDB Local tables, resources and a real instance."""

import json

import dagster as dg
import pytest

from shopify_pipeline.defs.resources import DynamoDBResource, ShopifyResource, SyncEngineResource
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.simulator import FaultConfig, ShopConfig, Simulator
from shopify_pipeline.sync.service import SyncService

SHOPS = [
    ShopConfig("acme", "shpat_acme", orders=700, products=40, customers=60, seed=21, plan="plus"),
    ShopConfig("small", "shpat_small", orders=60, products=5, customers=7, seed=22, plan="plus"),
]


@pytest.fixture(scope="module")
def sim():
    with Simulator(SHOPS, time_scale=10) as running:
        yield running


def table_prefix(settings) -> str:
    return settings.tables.orders.removesuffix("shopify_orders")


@pytest.fixture
def sync_engine(settings, sim) -> SyncEngineResource:
    """The engine resource against this test's tables and the simulator (fast client retries)."""
    for shop in SHOPS:
        sim.set_faults(shop.name, FaultConfig())
    return SyncEngineResource(
        dynamodb=DynamoDBResource(endpoint_url=settings.dynamodb_endpoint_url, region_name=settings.aws_region,
                                  table_prefix=table_prefix(settings)),
        shopify=ShopifyResource(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=2.0, page_size=100),
        min_records_to_slice=500,
    )


@pytest.fixture
def engine(sync_engine):
    return sync_engine.engine()


@pytest.fixture
def connected(engine, sim) -> dict[str, str]:
    """{user: shop}: a connection per simulated shop, plus one whose token Shopify refuses."""
    service = SyncService(engine)
    users = {}
    for shop in SHOPS:
        users[f"user-{shop.name}"] = shop.name
        service.add_connection(f"user-{shop.name}", sim.shop_url(shop.name), f"literal:{shop.token}")
    service.add_connection("user-badtoken", sim.shop_url("small"), "literal:shpat_wrong")
    users["user-badtoken"] = "small"
    return users


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def source_of_truth(sim, shop: str, data_type: str) -> dict[int, dict]:
    """The simulator's records, with fractions as Decimal like ours (its floats print back exactly)."""
    return {doc["id"]: doc for doc in (parse_json(json.dumps(r)) for r in sim.records(shop, data_type))}


def stored(engine, user: str, data_type: str) -> dict[int, dict]:
    docs = list(RecordTable(engine.dynamodb, engine.settings, data_type).documents(user))
    assert len(docs) == len({d["id"] for d in docs})
    return {doc["id"]: doc for doc in docs}
