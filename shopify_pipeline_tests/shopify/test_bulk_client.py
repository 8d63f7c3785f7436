"""Our bulk operations client against the simulator (a real HTTP server): start, poll, the meaning of every
end (never "empty" when objects exist), and the result download resumed with Range after a drop."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.bulk import (
    BulkInProgressError,
    BulkOperationFailedError,
    BulkOperations,
    BulkOperationStuckError,
    BulkQueryRefusedError,
    BulkResultExpiredError,
    ResultDownload,
)
from shopify_pipeline.shopify.client import ShopifyClient
from shopify_pipeline.shopify.errors import MissingScopeError
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.simulator.config import BulkConfig, BulkFaults

SETTINGS = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=5.0)
ORDERS = ("{ orders { edges { node { id legacyResourceId updatedAt "
          "lineItems { edges { node { id quantity } } } } } } }")


@pytest.fixture(scope="module")
def sim():
    shops = [ShopConfig("bulky", "shpat_bulky", orders=300, seed=5, plan="plus", large_order_every=100,
                        large_order_line_items=400),
             ShopConfig("one", "shpat_one", orders=50, seed=6, plan="plus", bulk=BulkConfig(concurrency=1))]
    with Simulator(shops, time_scale=50) as running:
        yield running


@pytest.fixture
def bulk(sim):
    sim.set_bulk_faults("bulky", BulkFaults())
    client = ShopifyClient(sim.shop_url("bulky"), "shpat_bulky", SETTINGS)
    yield BulkOperations(GraphQLClient(client))
    client.close()


def _quick(operations: BulkOperations, operation_id: str):
    return operations.wait(operation_id, first_poll=0.05, max_poll=0.2, max_seconds=60)


def test_a_completed_operation_downloads_whole(bulk, sim):
    operation = _quick(bulk, bulk.start(ORDERS).id)
    assert operation.status == "COMPLETED" and operation.root_object_count == 300
    url = bulk.result_url(operation)
    assert "shpat_bulky" not in url
    download = ResultDownload(SETTINGS)
    lines = [json.loads(line) for line, _ in download.lines(url)]
    download.close()
    assert len(lines) == operation.object_count
    parents = {line["id"] for line in lines if "__parentId" not in line}
    assert len(parents) == 300 and all(line["__parentId"] in parents for line in lines if "__parentId" in line)
    big = [p for p in parents if sum(1 for line in lines if line.get("__parentId") == p) == 400]
    assert len(big) == 3  # every 100th order has 400 line items, none cut


def test_a_dropped_download_resumes_with_range_and_loses_no_line(bulk, sim):
    sim.set_bulk_faults("bulky", BulkFaults(drop_download_after_bytes=50_000, drop_download_times=2))
    operation = _quick(bulk, bulk.start(ORDERS).id)
    download = ResultDownload(replace(SETTINGS, retries=3))
    lines = list(download.lines(bulk.result_url(operation)))
    assert len(lines) == operation.object_count
    assert sim.stats("bulky")["faults_served"].get("bulk_drop") == 2
    # A reader that stopped at a line resumes from its offset: the same lines follow.
    middle_line, middle_offset = lines[len(lines) // 2]
    rest = list(download.lines(bulk.result_url(operation), middle_offset))
    assert rest == lines[len(lines) // 2 + 1:]
    download.close()


def test_completed_without_a_url_is_an_error_when_objects_exist(bulk, sim):
    sim.set_bulk_faults("bulky", BulkFaults(null_url=True))
    operation = _quick(bulk, bulk.start(ORDERS).id)
    assert operation.status == "COMPLETED" and operation.url is None and operation.object_count > 0
    with pytest.raises(BulkOperationFailedError, match="not taken as empty"):
        bulk.result_url(operation)


def test_an_empty_result_is_only_one_with_no_objects(bulk):
    query = ORDERS.replace("{ orders {", "{ orders(query: \"created_at:<'1999-01-01T00:00:00Z'\") {")
    operation = _quick(bulk, bulk.start(query).id)
    assert operation.status == "COMPLETED" and operation.object_count == 0
    url = bulk.result_url(operation)  # Shopify gives no URL for no results; the simulator an empty file
    assert url is None or list(ResultDownload(SETTINGS).lines(url)) == []


@pytest.mark.parametrize("partial", [True, False])
def test_a_failed_operation_is_transient_and_names_its_partial_result(bulk, sim, partial):
    sim.set_bulk_faults("bulky", BulkFaults(fail="INTERNAL_SERVER_ERROR", partial_data=partial))
    operation = _quick(bulk, bulk.start(ORDERS).id)
    with pytest.raises(BulkOperationFailedError, match="INTERNAL_SERVER_ERROR") as raised:
        bulk.result_url(operation)
    assert bool(raised.value.operation.partial_data_url) is partial


def test_access_denied_is_permanent(bulk, sim):
    sim.set_bulk_faults("bulky", BulkFaults(fail="ACCESS_DENIED"))
    with pytest.raises(MissingScopeError, match="ACCESS_DENIED"):
        bulk.result_url(_quick(bulk, bulk.start(ORDERS).id))


def test_an_expired_result_needs_a_new_operation(bulk, sim):
    operation = _quick(bulk, bulk.start(ORDERS).id)
    url = bulk.result_url(operation)
    sim.expire_bulk_urls("bulky")
    with pytest.raises(BulkResultExpiredError):
        list(ResultDownload(SETTINGS).lines(url))
    with pytest.raises(BulkResultExpiredError):
        bulk.result_url(bulk.get(operation.id))


def test_a_stuck_operation_is_given_up_after_the_maximum_and_can_be_cancelled(bulk, sim):
    sim.set_bulk_faults("bulky", BulkFaults(stuck=True))
    started = bulk.start(ORDERS)
    with pytest.raises(BulkOperationFailedError, match="still RUNNING"):
        bulk.wait(started.id, first_poll=0.05, max_poll=0.1, max_seconds=0.5)
    bulk.cancel(started.id)
    assert _quick(bulk, started.id).status == "CANCELED"


def test_one_at_a_time_is_a_transient_in_progress_error_and_the_running_one_is_findable(sim):
    sim.set_bulk_faults("one", BulkFaults(stuck=True, times=1))
    client = ShopifyClient(sim.shop_url("one"), "shpat_one", SETTINGS)
    operations = BulkOperations(GraphQLClient(client))
    first = operations.start(ORDERS)
    with pytest.raises(BulkInProgressError, match="already in progress"):
        operations.start(ORDERS)
    newest = operations.recent()[0]  # an id lost to a crash is found again
    assert (newest.id, newest.ended, newest.query) == (first.id, False, ORDERS)
    operations.cancel(first.id)
    _quick(operations, first.id)
    assert _quick(operations, operations.start(ORDERS).id).status == "COMPLETED"
    client.close()


def test_a_query_shopify_will_not_run_is_ours_to_fix(bulk):
    with pytest.raises(BulkQueryRefusedError, match="connection"):
        bulk.start("{ shop { name } }")


class _Answers:
    """A GraphQL seam that answers every poll with the same running operation."""

    def __init__(self, operation: dict) -> None:
        self.operation = operation

    def execute(self, query, variables=None, expected_cost=None):
        from types import SimpleNamespace

        return SimpleNamespace(data={"bulkOperation": self.operation})


def test_a_created_at_in_the_future_cannot_keep_an_operation_from_being_stuck():
    # A hostile or skewed shop says the operation was created next year: the age counts from when we first
    # knew of it, so the wait still ends.
    now = {"t": 1_800_000_000.0}
    running = {"id": "gid://shopify/BulkOperation/1", "status": "RUNNING", "objectCount": "5",
               "createdAt": "2099-01-01T00:00:00Z"}
    operations = BulkOperations(_Answers(running), sleep=lambda s: now.update(t=now["t"] + s), clock=lambda: now["t"])
    with pytest.raises(BulkOperationStuckError, match="still RUNNING"):
        operations.wait(running["id"], first_poll=10, max_poll=60, max_seconds=600, first_seen=now["t"] - 300)
    assert now["t"] - 1_800_000_000.0 <= 360  # stopped once 600 s had passed since it was first seen
