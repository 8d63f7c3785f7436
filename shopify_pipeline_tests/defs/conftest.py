"""Fixtures for the Dagster layer: the simulator, DynamoDB Local tables, resources and a real instance."""


import dagster as dg
import pytest

from shopify_pipeline.defs.resources import DynamoDBResource, ShopifyResource, SyncEngineResource
from shopify_pipeline.dynamo.codec import record_key
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.simulator import FaultConfig, ShopConfig, Simulator
from shopify_pipeline.simulator.config import AuthConfig
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.graphql_truth import graphql_truth

SHOPS = [
    ShopConfig("acme", "shpat_acme", orders=700, products=40, customers=60, seed=21, plan="plus"),
    ShopConfig("small", "shpat_small", orders=60, products=5, customers=7, seed=22, plan="plus"),
    # A public app's shop: expiring offline tokens (issue #14).
    ShopConfig("public", "shpat_public", orders=40, products=5, customers=5, seed=23, plan="plus",
               auth=AuthConfig("pipeline-app", "app-secret-d4c1")),
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
    """The simulator's records as GraphQL serves them (the users here read through GraphQL, the default)."""
    return graphql_truth(sim, shop, data_type)


def stored(engine, user: str, data_type: str) -> dict[int, dict]:
    """A user's stored documents by numeric id (REST's id, GraphQL's legacyResourceId)."""
    docs = list(RecordTable(engine.dynamodb, engine.settings, data_type).documents(user))
    assert len(docs) == len({record_key(d) for d in docs})
    return {record_key(doc): doc for doc in docs}
