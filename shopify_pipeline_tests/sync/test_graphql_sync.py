"""Syncs through the GraphQL Admin API (the default), end to end: the simulator over HTTP, DynamoDB Local,
and every stored document compared with the simulator's own, field for field.

`gql-<shop>` users read through GraphQL, `user-<shop>` users through REST (sync/conftest.py).
"""

from dataclasses import replace

import pytest

from shopify_pipeline.dynamo.codec import GRAPHQL, REST
from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.simulator import FaultConfig, FaultRule
from shopify_pipeline.simulator.config import ALL_SCOPES
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions, deleted_id
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, kill_at_page, source_of_truth, stored, sync_process

_DOCUMENT_ATTRIBUTES = ("userId", "doc", "docZ", "docChunks", "docSha256")


def _items(service, user: str, data_type: str) -> dict[int, dict]:
    """The raw DynamoDB items of a user's records (query attributes, shape), by id, without the document."""
    table = service.engine.settings.tables.records(data_type)
    items, kwargs = {}, {}
    while True:
        page = service.engine.dynamodb.query(
            TableName=table, KeyConditionExpression="userId = :u", ExpressionAttributeValues={":u": {"S": user}},
            **kwargs)
        for item in page["Items"]:
            items[int(item["id"]["N"])] = {k: v for k, v in item.items() if k not in _DOCUMENT_ATTRIBUTES}
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.mark.parametrize("data_type", DATA_TYPES)
def test_an_initial_graphql_sync_stores_every_record_as_shopify_serves_it(service, sim, data_type):
    result = service.sync("gql-acme", "initial", data_types=(data_type,))
    assert result.success, result
    truth = graphql_truth(sim, "acme", data_type)
    assert stored(service, "gql-acme", data_type) == truth
    items = _items(service, "gql-acme", data_type)
    assert {item["shape"]["S"] for item in items.values()} == {GRAPHQL}
    status = service.get_sync_status("gql-acme")["dataTypes"][data_type]
    assert status["status"] == "completed" and status["apiVersion"] == "2026-10"
    assert "apiVersionWarning" not in status


def test_nested_connections_arrive_whole_where_rest_cuts_variants_at_100(service, sim):
    # acme's every 500th order has 700 line items (beyond one query's 250); catalog has 300-variant products.
    assert service.sync("gql-acme", "initial", data_types=("orders",)).success
    orders = stored(service, "gql-acme", "orders")
    big = [doc for doc in orders.values() if len(doc["lineItems"]["nodes"]) == 700]
    assert len(big) == len([r for r in sim.records("acme", "orders") if len(r["line_items"]) == 700]) >= 2

    assert service.sync("gql-catalog", "initial", data_types=("products",)).success
    assert service.sync("user-catalog", "initial", data_types=("products",)).success
    graphql, rest = stored(service, "gql-catalog", "products"), stored(service, "user-catalog", "products")
    large = [key for key, doc in graphql.items() if len(doc["variants"]["nodes"]) == 300]
    assert len(large) == 3
    assert {len(rest[key]["variants"]) for key in large} == {100}  # REST's silent cap, which GraphQL avoids
    assert [v["position"] for v in graphql[large[0]]["variants"]["nodes"]] == list(range(1, 301))


def test_rest_and_graphql_syncs_of_one_shop_agree_record_by_record(service, sim):
    for user in ("user-small", "gql-small"):
        assert service.sync(user, "initial").success
    for data_type in DATA_TYPES:
        rest, graphql = _items(service, "user-small", data_type), _items(service, "gql-small", data_type)
        assert sorted(rest) == sorted(graphql) == sorted(source_of_truth(sim, "small", data_type))
        for key in rest:
            assert rest[key].pop("shape") == {"S": REST} and graphql[key].pop("shape") == {"S": GRAPHQL}
            if data_type == "orders":
                # REST says null/partial/fulfilled, GraphQL UNFULFILLED/PARTIALLY_FULFILLED/…: not comparable.
                rest[key].pop("fulfillmentStatus", None), graphql[key].pop("fulfillmentStatus", None)
            assert rest[key] == graphql[key], (data_type, key)


def test_a_daily_graphql_sync_reads_only_changes_and_removes_deleted_records(service, sim):
    assert service.sync("gql-small", "initial").success
    changed = sim.update_records("small", "orders", n=7, seed=31)
    deleted = sim.delete_records("small", "orders", n=3, seed=32)
    deleted_products = sim.delete_records("small", "products", n=1, seed=33)
    before = sim.stats("small")["requests"].get("graphql", 0)
    result = service.sync("gql-small", data_types=("orders", "products"))  # auto: daily
    assert result.success and result.data_types["orders"].sync_type == "daily"
    assert result.data_types["orders"].records >= len(set(changed) - set(deleted))
    assert result.data_types["orders"].records < 60  # only what changed, not the shop
    assert result.data_types["orders"].deleted == 3
    orders = stored(service, "gql-small", "orders")
    assert not set(deleted) & set(orders) and not set(deleted_products) & set(stored(service, "gql-small", "products"))
    assert orders == graphql_truth(sim, "small", "orders")
    assert stored(service, "gql-small", "products") == graphql_truth(sim, "small", "products")
    # A probe page and its deletion events per data type: a handful of queries, not a re-read.
    assert sim.stats("small")["requests"]["graphql"] - before <= 8


@pytest.mark.parametrize("fault", [
    FaultRule("throttled", endpoint="graphql:orders", page=2, times=3),
    FaultRule("502", endpoint="graphql:orders", page=3, times=2),
    FaultRule("partial", endpoint="graphql:orders", page=2, times=2),
], ids=["throttled", "5xx", "partial-data"])
def test_throttling_5xx_and_partial_data_are_retried_and_nothing_is_lost(service, sim, fault):
    sim.set_faults("acme", FaultConfig(rules=(fault,)))
    result = service.sync("gql-acme", "initial", data_types=("orders",))
    assert result.success, result
    orders = result.data_types["orders"]
    if fault.kind == "throttled":
        assert orders.throttled >= 3
    else:
        assert orders.retries >= 2
    assert stored(service, "gql-acme", "orders") == graphql_truth(sim, "acme", "orders")


def test_partial_data_that_persists_fails_the_page_and_a_rerun_fetches_only_it(service, sim):
    # Page 2 of every slice keeps answering with partial data (4 slices: 4 pages fail after their retries).
    sim.set_faults("acme", FaultConfig(rules=(FaultRule("partial", endpoint="graphql:orders", page=2, times=0),)))
    first = service.sync("gql-acme", "initial", data_types=("orders",))
    failed = first.data_types["orders"].failed_pages
    assert not first.success and len(failed) == 4 and {page["page"] for page in failed} == {2}
    # The fault fails the only root field: Shopify's internal error, no usable data (partial or none).
    assert all("partial data" in page["error"] or "failed internally" in page["error"] for page in failed)
    status = service.get_sync_status("gql-acme")["dataTypes"]["orders"]
    assert status["status"] == "failed" and status["failedPages"] == 4
    sim.set_faults("acme", FaultConfig())
    second = service.sync("gql-acme", data_types=("orders",))  # auto resumes the initial sync
    assert second.success and second.data_types["orders"].sync_type == "initial"
    # The 4 pages staged before are kept; the rerun fetches from each slice's saved cursor on.
    assert second.data_types["orders"].pages_fetched_this_run == (
        second.data_types["orders"].pages - first.data_types["orders"].pages)
    assert stored(service, "gql-acme", "orders") == graphql_truth(sim, "acme", "orders")


def test_access_denied_is_a_permanent_error_that_names_the_scope(service, sim):
    sim.set_scopes("small", ("read_orders", "read_products"))  # no read_customers
    try:
        result = service.sync("gql-small", "initial", data_types=("customers",))
    finally:
        sim.set_scopes("small", ALL_SCOPES)
    error = result.data_types["customers"].error
    assert not result.success and "read_customers" in error and "ACCESS_DENIED" in error
    assert service.get_sync_status("gql-small")["dataTypes"]["customers"]["error"]["permanent"] is True


def test_a_sync_started_on_one_api_is_not_resumed_on_the_other(service, sim):
    sim.set_faults("acme", FaultConfig(rules=(FaultRule("502", endpoint="graphql:orders", page=2, times=0),)))
    assert not service.sync("gql-acme", "initial", data_types=("orders",)).success
    kept = service.load_checkpoint("gql-acme", "initial")["orders"]
    service.add_connection("gql-acme", sim.shop_url("acme"), "literal:shpat_acme", api="rest")
    sim.set_faults("acme", FaultConfig())
    result = service.sync("gql-acme", "initial", data_types=("orders",))
    error = result.data_types["orders"].error
    assert not result.success and "started on GRAPHQL" in error and "--api graphql" in error
    assert service.load_checkpoint("gql-acme", "initial")["orders"] == kept  # untouched
    service.add_connection("gql-acme", sim.shop_url("acme"), "literal:shpat_acme", api="graphql")
    assert service.sync("gql-acme", data_types=("orders",)).success
    assert stored(service, "gql-acme", "orders") == graphql_truth(sim, "acme", "orders")


def test_changing_the_api_needs_a_full_sync_that_rewrites_every_document(service, sim):
    assert service.sync("user-small", "initial", data_types=("orders",)).success  # REST documents
    # An order Shopify no longer lists (deleted without an event): a full sync cannot rewrite it.
    service.engine.writer.write_records("user-small", "orders", [{"id": 4242, "updated_at": "2026-01-01T00:00:00Z"}])
    switched = service.add_connection("user-small", sim.shop_url("small"), "literal:shpat_small", api="graphql")
    notice = service.api_change_notice(switched)
    assert notice and "orders (REST)" in notice and "--type manual" in notice
    refused = service.sync("user-small", "daily", data_types=("orders",))
    assert not refused.success and "a daily sync would mix the two" in refused.data_types["orders"].error
    assert {i["shape"]["S"] for i in _items(service, "user-small", "orders").values()} == {REST}

    rewritten = service.sync("user-small", data_types=("orders",))  # auto chooses the manual sync
    assert rewritten.success and rewritten.data_types["orders"].sync_type == "manual"
    items = _items(service, "user-small", "orders")
    assert {key for key, item in items.items() if item["shape"]["S"] == REST} == {4242}
    assert stored(service, "user-small", "orders") == {**graphql_truth(sim, "small", "orders"),
                                                      4242: {"id": 4242, "updated_at": "2026-01-01T00:00:00Z"}}
    status = service.get_sync_status("user-small")["dataTypes"]["orders"]
    assert status["otherShapeRecords"] == 1 and "1 stored orders still have the other API's shape" in status["message"]
    assert service.api_change_notice(service.engine.connections.get("user-small")) is None
    assert service.sync("user-small", data_types=("orders",)).data_types["orders"].sync_type == "daily"


def test_a_retired_api_version_falls_forward_and_the_status_says_so(settings, sim):
    old = SyncService(SyncEngine(settings, replace(FAST_SHOPIFY, api_version="2025-10")))
    old.add_connection("gql-old", sim.shop_url("small"), "literal:shpat_small")
    assert old.sync("gql-old", "initial", data_types=("customers",)).success
    status = old.get_sync_status("gql-old")["dataTypes"]["customers"]
    assert status["apiVersion"] == "2026-01"
    assert "asked for API version 2025-10" in status["apiVersionWarning"]


def test_without_read_all_orders_a_graphql_sync_flags_only_recent_orders(service, sim):
    result = service.sync("gql-recent", "initial", data_types=("orders",))
    assert result.success
    assert stored(service, "gql-recent", "orders") == graphql_truth(sim, "recent", "orders")
    assert service.load_checkpoint("gql-recent", "initial") == {}  # finished
    assert 0 < len(stored(service, "gql-recent", "orders")) < 30


# A real process killed with SIGKILL mid-sync, three times: it resumes from the cursor it saved.

def test_a_graphql_sync_killed_with_sigkill_resumes_from_its_cursors(settings, slow_sim):
    engine = SyncEngine(settings, FAST_SHOPIFY)
    SyncService(engine).add_connection("gql-big", slow_sim.shop_url("big"), "literal:shpat_big")
    kills = 0
    for target in (5, 15, 25):
        kills += kill_at_page(engine, sync_process(settings, "gql-big"), "gql-big", target)
    assert sync_process(settings, "gql-big").wait(timeout=240) == 0
    assert kills >= 2
    stats = slow_sim.stats("big")
    status = engine.state.get_status("gql-big")["orders"]
    assert status["status"] == "completed"
    planning = 2 + stats["graphql_roots"]["ordersCount"]  # access scopes, the oldest order, the counts
    refetched = stats["requests"]["graphql"] - stats["graphql_throttled"] - planning - status["page"]
    print(f"{kills} kills: {refetched} pages fetched again ({status['page']} pages in all)")
    assert 0 <= refetched <= kills * SyncOptions().slices
    assert stored(SyncService(engine), "gql-big", "orders") == graphql_truth(slow_sim, "big", "orders")


def test_a_permanent_graphql_error_is_not_retried(service, sim):
    sim.set_state("small", "frozen")
    try:
        result = service.sync("gql-small", "initial", data_types=("orders",))
    finally:
        sim.set_state("small", "active")
    assert not result.success and "frozen" in result.data_types["orders"].error
    assert service.get_sync_status("gql-small")["dataTypes"]["orders"]["error"]["permanent"] is True
    assert sim.stats("small")["responses"].get("402") == 1  # asked once: a frozen shop is not retried


def test_an_expired_graphql_cursor_restarts_its_slice_and_nothing_is_lost(service, sim):
    sim.set_faults("small", FaultConfig(rules=(FaultRule("502", endpoint="graphql:orders", page=2, times=0),)))
    assert not service.sync("gql-small", "initial", data_types=("orders",)).success
    engine = service.engine
    checkpoint = engine.state.load_checkpoint("gql-small", "initial", "orders")
    [piece] = checkpoint.state["slices"]
    assert piece["next"] and piece["pages"] == 1
    piece["next"] = "eyJleHBpcmVkIjp0cnVlfQ=="  # a cursor Shopify no longer honours (expired, or tampered with)
    engine.state.save_checkpoint(replace(checkpoint, state=checkpoint.state))
    sim.set_faults("small", FaultConfig())
    result = service.sync("gql-small", data_types=("orders",))
    assert result.success and result.data_types["orders"].sync_type == "initial"
    truth = graphql_truth(sim, "small", "orders")
    assert stored(service, "gql-small", "orders") == truth
    status = service.get_sync_status("gql-small")["dataTypes"]["orders"]
    assert status["recordCount"] == len(truth)  # the slice's earlier page was dropped and fetched anew: once


def test_a_failed_rest_batch_never_overwrites_a_graphql_document_after_the_switch(service, sim):
    assert service.sync("user-small", "initial", data_types=("orders",)).success
    rest_docs = stored(service, "user-small", "orders")
    key = sorted(rest_docs)[0]
    service.engine.state.save_failed_batch("user-small", "manual", "orders", 1, 1, [rest_docs[key]], "test", 1)
    service.add_connection("user-small", sim.shop_url("small"), "literal:shpat_small", api="graphql")
    assert service.sync("user-small", "manual", data_types=("orders",)).success  # retries the batch first
    after = stored(service, "user-small", "orders")
    assert after == graphql_truth(sim, "small", "orders")  # the REST copy did not come back
    assert _items(service, "user-small", "orders")[key]["shape"] == {"S": GRAPHQL}


def test_a_connection_stored_before_the_api_choice_reads_rest_and_gets_its_shapes_on_the_next_sync(service, sim):
    service.engine.dynamodb.put_item(TableName=service.engine.settings.tables.connections, Item={
        "userId": {"S": "old-user"}, "shop": {"S": sim.shop_url("small")}, "tokenRef": {"S": "literal:shpat_small"},
        "createdAt": {"S": "2026-01-01T00:00:00Z"}, "lastSync": {"M": {}}, "highWater": {"M": {}}})
    connection = service.engine.connections.get("old-user")
    assert connection.api == REST and connection.shapes == {}
    assert service.sync("old-user", data_types=("customers",)).success
    assert service.engine.connections.get("old-user").shapes == {"customers": REST}


@pytest.mark.parametrize(("event", "deleted"), [
    ({"action": "destroy", "subjectType": "ORDER", "subjectId": "gid://shopify/Order/7"}, 7),
    ({"action": "destroy", "subjectType": "PRODUCT", "subjectId": "gid://shopify/Product/7"}, None),
    ({"action": "destroy", "subjectType": "ORDER", "subjectId": "gid://shopify/Product/7"}, None),
    ({"action": "update", "subjectType": "ORDER", "subjectId": "gid://shopify/Order/7"}, None),
    ({"action": "destroy", "subjectType": "ORDER", "subjectId": "gid://shopify/Order/²"}, None),
    ({"verb": "destroy", "subject_type": "Order", "subject_id": 8}, 8),
    ({"verb": "destroy", "subject_type": "Product", "subject_id": 8}, None),
    ("destroy", None),
])
def test_a_deletion_event_deletes_only_a_record_of_its_own_type(event, deleted):
    assert deleted_id(event, "orders") == deleted
