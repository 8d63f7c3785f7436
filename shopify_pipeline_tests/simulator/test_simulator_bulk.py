"""The simulator's bulk query operations, through plain HTTP: lifecycle, JSONL equal to the paged GraphQL
documents, concurrency per API version, cancel, faults, the result download (Range, expiry, drops), and the
`bulkOperations` listing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from graphql import build_schema, parse

from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator
from shopify_pipeline.simulator.bulk import ShapeBuilder
from shopify_pipeline.simulator.config import SUPPORTED_API_VERSIONS, BulkConfig, BulkFaults

VERSION = "2026-10"
TIME_SCALE = 50
TERMINAL = ("COMPLETED", "FAILED", "CANCELED", "EXPIRED")

RUN = """
mutation Run($query: String!, $group: Boolean) {
  bulkOperationRunQuery(query: $query, groupObjects: $group) {
    bulkOperation { id status objectCount url query type }
    userErrors { field message code }
  }
}
"""
POLL = """
query Poll($id: ID!) {
  bulkOperation(id: $id) {
    id status errorCode createdAt completedAt objectCount rootObjectCount fileSize url partialDataUrl query type
  }
}
"""
CANCEL = """
mutation Cancel($id: ID!) {
  bulkOperationCancel(id: $id) { bulkOperation { id status } userErrors { field message } }
}
"""
LIST = """
query List($first: Int, $after: String, $last: Int, $before: String, $query: String,
           $sortKey: BulkOperationsSortKeys, $reverse: Boolean) {
  bulkOperations(first: $first, after: $after, last: $last, before: $before, query: $query, sortKey: $sortKey,
                 reverse: $reverse) {
    edges {
      cursor
      node {
        id status errorCode createdAt completedAt objectCount rootObjectCount fileSize url partialDataUrl query
        type
      }
    }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}
"""

ORDER_FIELDS = "id name email updatedAt totalPriceSet { shopMoney { amount currencyCode } } customer { id email }"
LINE_ITEM_FIELDS = "id name quantity sku originalUnitPriceSet { shopMoney { amount } }"
PRODUCT_FIELDS = "id title handle status updatedAt tags"
VARIANT_FIELDS = "id title sku price position inventoryQuantity"
CUSTOMER_FIELDS = "id email firstName lastName state updatedAt"
ADDRESS_FIELDS = "id address1 city zip countryCodeV2"



def bulk_query(root: str, fields: str, nested: str, nested_fields: str) -> str:
    """A bulk query of `root` with one nested connection (no `first`: a bulk query reads everything)."""
    return f"{{ {root} {{ edges {{ node {{ {fields} {nested} {{ edges {{ node {{ {nested_fields} }} }} }} }} }} }} }}"


ORDERS_BULK = bulk_query("orders", ORDER_FIELDS, "lineItems", LINE_ITEM_FIELDS)
PRODUCTS_BULK = bulk_query("products", PRODUCT_FIELDS, "variants", VARIANT_FIELDS)
CUSTOMERS_BULK = bulk_query("customers", CUSTOMER_FIELDS, "addressesV2", ADDRESS_FIELDS)
SMALL_BULK = "{ orders { edges { node { id name } } } }"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    shops = [
        ShopConfig("main", "shpat_main", orders=400, products=30, customers=60, seed=3, plan="plus",
                   large_order_every=100, large_product_every=10),
        ShopConfig("slow", "shpat_slow", orders=600, products=3, customers=3, seed=4, plan="plus",
                   bulk=BulkConfig(objects_per_second=20)),
        ShopConfig("faulty", "shpat_faulty", orders=200, products=5, customers=5, seed=5, plan="plus"),
        ShopConfig("old", "shpat_old", orders=40, products=2, customers=2, seed=6, plan="plus",
                   api_versions=("2025-10", *SUPPORTED_API_VERSIONS)),
        ShopConfig("single", "shpat_single", orders=40, products=2, customers=2, seed=7, plan="plus",
                   bulk=BulkConfig(concurrency=1)),
        ShopConfig("expiring", "shpat_expiring", orders=40, products=2, customers=2, seed=8, plan="plus",
                   bulk=BulkConfig(url_expiry_seconds=40)),
        ShopConfig("limited", "shpat_limited", orders=40, products=2, customers=2, seed=9, plan="plus",
                   bulk=BulkConfig(max_duration_seconds=20)),
        ShopConfig("listing", "shpat_listing", orders=40, products=2, customers=2, seed=10, plan="plus"),
    ]
    with Simulator(shops, time_scale=TIME_SCALE) as running:
        yield running


@pytest.fixture()
def faulty(sim: Simulator) -> Iterator[str]:
    """The shop for fault tests, its faults cleared afterwards."""
    yield "faulty"
    sim.set_bulk_faults("faulty", BulkFaults())


def post(sim: Simulator, shop: str, query: str, variables: dict[str, Any] | None = None,
         version: str = VERSION) -> dict[str, Any]:
    url = f"{sim.shop_url(shop)}/admin/api/{version}/graphql.json"
    answer = requests.post(url, json={"query": query, "variables": variables},
                           headers={"X-Shopify-Access-Token": f"shpat_{shop}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def run(sim: Simulator, shop: str, query: str, group: bool | None = None, version: str = VERSION) -> dict:
    """bulkOperationRunQuery's payload."""
    return post(sim, shop, RUN, {"query": query, "group": group}, version)["data"]["bulkOperationRunQuery"]


def start(sim: Simulator, shop: str, query: str, group: bool | None = None, version: str = VERSION) -> str:
    payload = run(sim, shop, query, group, version)
    assert payload["userErrors"] == [], payload
    return payload["bulkOperation"]["id"]


def poll(sim: Simulator, shop: str, operation_id: str) -> dict[str, Any]:
    return post(sim, shop, POLL, {"id": operation_id})["data"]["bulkOperation"]


def wait(sim: Simulator, shop: str, operation_id: str, until: tuple[str, ...] = TERMINAL,
         timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        operation = poll(sim, shop, operation_id)
        if operation["status"] in until:
            return operation
        assert time.monotonic() < deadline, operation
        time.sleep(0.02)


def cancel(sim: Simulator, shop: str, operation_id: str) -> dict[str, Any]:
    return post(sim, shop, CANCEL, {"id": operation_id})["data"]["bulkOperationCancel"]


def listing(sim: Simulator, shop: str, **arguments: Any) -> dict[str, Any]:
    """The bulkOperations connection for `arguments` (those left out take the schema's defaults)."""
    answer = post(sim, shop, LIST, arguments)
    assert "errors" not in answer, answer
    return answer["data"]["bulkOperations"]


def listed_ids(sim: Simulator, shop: str, **arguments: Any) -> list[str]:
    return [edge["node"]["id"] for edge in listing(sim, shop, first=50, **arguments)["edges"]]


def utc(rest_timestamp: str) -> str:
    return datetime.fromisoformat(rest_timestamp).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def download(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=30)


def reassemble(rows: list[dict[str, Any]], child_field: str) -> dict[str, dict[str, Any]]:
    """Parents by id with their children (in file order) under `child_field`, wherever the children are."""
    parents = {row["id"]: {**row, child_field: []} for row in rows if "__parentId" not in row}
    for row in rows:
        if "__parentId" in row:
            child = {key: value for key, value in row.items() if key != "__parentId"}
            parents[row["__parentId"]][child_field].append(child)
    return parents


def paged(sim: Simulator, shop: str, root: str, type_name: str, fields: str, nested: str, nested_fields: str,
          page: int = 5, nested_page: int = 50) -> dict[str, dict[str, Any]]:
    """Every record through ordinary paged GraphQL, each nested connection followed to its end."""
    connection = f"{nested}(first: {nested_page}, after: $inner) {{ edges {{ node {{ {nested_fields} }} }} " \
                 "pageInfo { hasNextPage endCursor } }"
    listing = (f"query($after: String, $inner: String) {{ {root}(first: {page}, after: $after) {{ "
               f"edges {{ node {{ {fields} {connection} }} }} pageInfo {{ hasNextPage endCursor }} }} }}")
    more = f"query($id: ID!, $inner: String) {{ node(id: $id) {{ ... on {type_name} {{ {connection} }} }} }}"
    documents: dict[str, dict[str, Any]] = {}
    after = None
    while True:
        answer = post(sim, shop, listing, {"after": after, "inner": None})
        assert "errors" not in answer, answer
        data = answer["data"][root]
        for edge in data["edges"]:
            node = edge["node"]
            inner = node[nested]
            children = [child["node"] for child in inner["edges"]]
            while inner["pageInfo"]["hasNextPage"]:
                inner = post(sim, shop, more, {"id": node["id"], "inner": inner["pageInfo"]["endCursor"]})
                inner = inner["data"]["node"][nested]
                children += [child["node"] for child in inner["edges"]]
            node[nested] = children
            documents[node["id"]] = node
        if not data["pageInfo"]["hasNextPage"]:
            return documents
        after = data["pageInfo"]["endCursor"]


def completed_rows(sim: Simulator, shop: str, query: str, group: bool | None = None) -> tuple[dict, bytes]:
    operation = wait(sim, shop, start(sim, shop, query, group))
    assert operation["status"] == "COMPLETED", operation
    body = download(operation["url"]).content
    return operation, body


# -- lifecycle and content ------------------------------------------------------------------------------


def test_lifecycle_created_running_completed_with_growing_object_count(sim: Simulator):
    payload = run(sim, "slow", SMALL_BULK)
    assert payload["userErrors"] == []
    operation = payload["bulkOperation"]
    assert operation["status"] == "CREATED" and operation["objectCount"] == "0" and operation["url"] is None
    assert operation["type"] == "QUERY" and operation["query"] == SMALL_BULK
    seen = []
    while True:
        state = poll(sim, "slow", operation["id"])
        seen.append((state["status"], int(state["objectCount"])))
        if state["status"] in TERMINAL:
            break
        time.sleep(0.02)
    counts = [count for _, count in seen]
    assert counts == sorted(counts), "objectCount never goes down"
    running = [count for status, count in seen if status == "RUNNING"]
    assert len(set(running)) >= 3 and 0 < running[-1] < 600, seen
    assert state["status"] == "COMPLETED" and state["errorCode"] is None
    assert state["objectCount"] == state["rootObjectCount"] == str(len(sim.records("slow", "orders")))
    assert state["completedAt"] >= state["createdAt"]
    body = download(state["url"]).content
    assert int(state["fileSize"]) == len(body)
    assert [row["name"] for row in lines(body)] == [order["name"] for order in sim.records("slow", "orders")]


def test_mutation_costs_10_and_the_poll_is_an_object(sim: Simulator):
    answer = post(sim, "old", RUN, {"query": SMALL_BULK, "group": None})
    assert answer["extensions"]["cost"]["requestedQueryCost"] == 10
    assert answer["extensions"]["cost"]["actualQueryCost"] == 10
    operation_id = answer["data"]["bulkOperationRunQuery"]["bulkOperation"]["id"]
    polled = post(sim, "old", POLL, {"id": operation_id})
    assert polled["extensions"]["cost"]["requestedQueryCost"] == 1
    wait(sim, "old", operation_id)


def test_orders_with_line_items_grouped_equal_the_paged_documents(sim: Simulator):
    operation, body = completed_rows(sim, "main", ORDERS_BULK, group=True)
    rows = lines(body)
    truth = paged(sim, "main", "orders", "Order", ORDER_FIELDS, "lineItems", LINE_ITEM_FIELDS)
    assert reassemble(rows, "lineItems") == truth
    assert max(len(order["lineItems"]) for order in truth.values()) == 300
    # Grouped: every child line follows its own parent, before the next parent.
    parent = None
    for row in rows:
        if "__parentId" in row:
            assert row["__parentId"] == parent
        else:
            parent = row["id"]
    assert int(operation["objectCount"]) == len(rows)
    assert int(operation["rootObjectCount"]) == len(truth) == 400
    assert list(reassemble(rows, "lineItems")) == list(truth)  # parents in id order, as listed


def test_products_with_300_variants_ungrouped_by_default_from_2026_01(sim: Simulator):
    _, body = completed_rows(sim, "main", PRODUCTS_BULK)
    rows = lines(body)
    truth = paged(sim, "main", "products", "Product", PRODUCT_FIELDS, "variants", VARIANT_FIELDS, nested_page=100)
    assembled = reassemble(rows, "variants")
    for document in assembled.values():
        document["variants"].sort(key=lambda variant: variant["position"])
    assert assembled == truth
    assert sorted(len(product["variants"]) for product in truth.values())[-3:] == [300, 300, 300]
    # Not grouped: some child comes before its parent or after another parent.
    seen, parent, out_of_place = set(), None, 0
    for row in rows:
        if "__parentId" not in row:
            seen.add(row["id"])
            parent = row["id"]
        elif row["__parentId"] != parent:
            out_of_place += 1
    assert out_of_place > 100


def test_customers_with_addresses_equal_the_paged_documents(sim: Simulator):
    _, body = completed_rows(sim, "main", CUSTOMERS_BULK, group=False)
    truth = paged(sim, "main", "customers", "Customer", CUSTOMER_FIELDS, "addressesV2", ADDRESS_FIELDS)
    assembled = reassemble(lines(body), "addressesV2")
    assert {key: {**value, "addressesV2": sorted(value["addressesV2"], key=lambda a: a["id"])}
            for key, value in assembled.items()} == {
        key: {**value, "addressesV2": sorted(value["addressesV2"], key=lambda a: a["id"])}
        for key, value in truth.items()}
    assert len(truth) == 60 and all(customer["addressesV2"] for customer in truth.values())


def test_a_connection_inside_an_object_belongs_to_the_enclosing_node(sim: Simulator):
    query = "{ orders { edges { node { id customer { id email addressesV2 { edges { node { id city } } } } } } } }"
    _, body = completed_rows(sim, "main", query, group=True)
    rows = lines(body)
    orders = {row["id"]: row for row in rows if "__parentId" not in row}
    addresses = [row for row in rows if "__parentId" in row]
    assert len(orders) == 400 and addresses
    assert all(row["__parentId"] in orders for row in addresses)
    assert all("addressesV2" not in order["customer"] for order in orders.values() if order["customer"])


def test_events_can_be_exported(sim: Simulator):
    deleted = sim.delete_records("old", "orders", n=2, seed=3)
    query = "{ events(query: \"subject_type:ORDER\") { edges { node { id action ... on BasicEvent { subjectId } } } } }"
    _, body = completed_rows(sim, "old", query)
    assert {row["subjectId"] for row in lines(body)} >= {f"gid://shopify/Order/{id_}" for id_ in deleted}


def test_search_query_filters_the_bulk_export(sim: Simulator):
    cutoff = sorted(order["id"] for order in sim.records("main", "orders"))[99]
    query = f'{{ orders(query: "id:<={cutoff}") {{ edges {{ node {{ id }} }} }} }}'
    operation, body = completed_rows(sim, "main", query)
    assert len(lines(body)) == 100 and operation["objectCount"] == "100"


def test_the_result_is_a_snapshot_taken_at_the_start(sim: Simulator):
    before = {f"gid://shopify/Order/{id_}": utc(stamp) for id_, stamp in sim.record_versions("slow", "orders").items()}
    operation_id = start(sim, "slow", "{ orders { edges { node { id updatedAt } } } }")
    deleted = sim.delete_records("slow", "orders", n=3, seed=11)
    updated = sim.update_records("slow", "orders", n=5, seed=12)
    created = sim.create_records("slow", "orders", n=2)
    assert deleted and updated and created
    operation = wait(sim, "slow", operation_id)
    rows = lines(download(operation["url"]).content)
    assert {row["id"]: row["updatedAt"] for row in rows} == before


# -- checks of the inner query ---------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "message"), [
    ("{ shop { id name } }", "Bulk queries must contain at least one connection."),
    ('{ node(id: "gid://shopify/Order/1") { id } }', "Bulk queries cannot contain a top level `node` field."),
    ("{ orders { nodes { id } } }", "Selecting via 'nodes' is not supported. Invalid connection fields: 'orders'."),
    ("{ orders { edges { node { name lineItems { edges { node { id } } } } } } }",
     "Connection fields without 'id': orders."),
    ("{ orders { edges { node { id a: lineItems { edges { node { id } } } b: lineItems { edges { node { id } } } "
     "c: lineItems { edges { node { id } } } d: lineItems { edges { node { id } } } "
     "e: lineItems { edges { node { id } } } } } } }", "Bulk queries cannot contain more than 5 connections."),
    ("{ orders { edges { node { id } } }", "Invalid bulk query: Syntax Error"),
    ("{ orders { edges { node { id nope } } } }", "Invalid bulk query: Cannot query field 'nope' on type 'Order'."),
    ("mutation { bulkOperationCancel(id: \"x\") { userErrors { message } } }",
     "Invalid operation type. Only `query` operations are supported."),
    ('{ orders(query: "a OR b") { edges { node { id } } } }', "only field:value terms"),
])
def test_invalid_bulk_queries_are_user_errors(sim: Simulator, query: str, message: str):
    payload = run(sim, "main", query)
    assert payload["bulkOperation"] is None
    assert any(message in error["message"] for error in payload["userErrors"]), payload["userErrors"]
    assert all(error["field"] == ["query"] and error["code"] == "INVALID" for error in payload["userErrors"])


def test_nesting_depth_is_counted_in_connections():
    # This schema has no three-deep connection path, so the count is checked on one that does.
    schema = build_schema("""
        type Query { a(first: Int): AConnection }
        type AConnection { edges: [AEdge!]! nodes: [A!]! }
        type AEdge { node: A! }
        type A { id: ID! a(first: Int): AConnection }
    """)
    document = parse("{ a { edges { node { id a { edges { node { id a { edges { node { id } } } } } } } } } }")
    builder = ShapeBuilder(document)
    builder.object_shape(builder.fields(document.definitions[0].selection_set, schema.query_type), 0)
    assert (builder.connections, builder.depth) == (3, 3)


# -- polling, current, cancel ------------------------------------------------------------------------------


def test_bulk_operation_by_id_and_current_bulk_operation(sim: Simulator):
    operation_id = start(sim, "old", SMALL_BULK)
    current = post(sim, "old", "{ q: currentBulkOperation { id status } m: currentBulkOperation(type: MUTATION) "
                                "{ id } }")["data"]
    assert current["q"]["id"] == operation_id and current["m"] is None
    assert poll(sim, "old", "gid://shopify/BulkOperation/1") is None
    assert poll(sim, "main", operation_id) is None, "another shop's operation is not visible"
    wait(sim, "old", operation_id)
    assert post(sim, "old", "{ currentBulkOperation { id status } }")["data"]["currentBulkOperation"] == {
        "id": operation_id, "status": "COMPLETED"}


def test_cancel_a_running_operation(sim: Simulator):
    operation_id = start(sim, "slow", SMALL_BULK)
    wait(sim, "slow", operation_id, until=("RUNNING",))
    payload = cancel(sim, "slow", operation_id)
    assert payload == {"bulkOperation": {"id": operation_id, "status": "CANCELING"}, "userErrors": []}
    operation = wait(sim, "slow", operation_id)
    assert operation["status"] == "CANCELED" and operation["url"] is None
    frozen = operation["objectCount"]
    time.sleep(0.2)
    assert poll(sim, "slow", operation_id)["objectCount"] == frozen
    again = cancel(sim, "slow", operation_id)
    assert again["userErrors"] == [{"field": None,
                                    "message": "A bulk operation cannot be canceled when it is canceled"}]
    assert again["bulkOperation"]["status"] == "CANCELED"
    unknown = cancel(sim, "slow", "gid://shopify/BulkOperation/1")
    assert unknown == {"bulkOperation": None,
                       "userErrors": [{"field": ["id"], "message": "Bulk operation does not exist"}]}


# -- concurrency ---------------------------------------------------------------------------------------------


def test_five_at_once_from_2026_01_and_the_sixth_is_refused(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(stuck=True))
    running = [start(sim, faulty, SMALL_BULK, version="2026-01") for _ in range(5)]
    refused = run(sim, faulty, SMALL_BULK, version="2026-01")
    assert refused["bulkOperation"] is None
    assert refused["userErrors"] == [{"field": None, "code": "OPERATION_IN_PROGRESS", "message":
                                      f"A bulk query operation for this app and shop is already in progress: "
                                      f"{running[-1]}."}]
    for operation_id in running:
        cancel(sim, faulty, operation_id)
    for operation_id in running:
        assert wait(sim, faulty, operation_id)["status"] == "CANCELED"
    sim.set_bulk_faults(faulty, BulkFaults())
    assert wait(sim, faulty, start(sim, faulty, SMALL_BULK))["status"] == "COMPLETED"


def test_one_at_a_time_on_2025_10_and_grouped_by_default(sim: Simulator):
    sim.set_bulk_faults("old", BulkFaults(stuck=True, times=1))  # the first holds its slot
    first = start(sim, "old", SMALL_BULK, version="2025-10")
    refused = run(sim, "old", SMALL_BULK, version="2025-10")
    assert refused["userErrors"][0]["message"] == (
        f"A bulk query operation for this app and shop is already in progress: {first}.")
    cancel(sim, "old", first)
    wait(sim, "old", first)
    operation = wait(sim, "old", start(sim, "old", ORDERS_BULK.replace(ORDER_FIELDS, "id"), version="2025-10"))
    parent = None
    for row in lines(download(operation["url"]).content):
        if "__parentId" in row:
            assert row["__parentId"] == parent
        else:
            parent = row["id"]


def test_the_concurrency_limit_is_a_shop_setting(sim: Simulator):
    sim.set_bulk_faults("single", BulkFaults(stuck=True, times=1))
    first = start(sim, "single", SMALL_BULK)
    assert run(sim, "single", SMALL_BULK)["userErrors"][0]["code"] == "OPERATION_IN_PROGRESS"
    cancel(sim, "single", first)
    wait(sim, "single", first)
    wait(sim, "single", start(sim, "single", SMALL_BULK))


# -- faults -------------------------------------------------------------------------------------------------


def test_failed_with_partial_data_is_a_prefix_of_the_lines(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(fail="INTERNAL_SERVER_ERROR", fail_at=0.4, partial_data=True, times=1))
    query = ORDERS_BULK.replace(ORDER_FIELDS, "id name")
    failed = wait(sim, faulty, start(sim, faulty, query, group=True))
    assert failed["status"] == "FAILED" and failed["errorCode"] == "INTERNAL_SERVER_ERROR"
    assert failed["url"] is None and failed["partialDataUrl"] and failed["completedAt"] is None
    partial = download(failed["partialDataUrl"]).content
    _, whole = completed_rows(sim, faulty, query, group=True)  # `times=1`: this one succeeds
    assert whole.startswith(partial) and partial.endswith(b"\n")
    assert len(partial.splitlines()) == int(failed["objectCount"]) == int(len(whole.splitlines()) * 0.4)


@pytest.mark.parametrize("code", ["INTERNAL_SERVER_ERROR", "TIMEOUT"])
def test_failed_without_partial_data(sim: Simulator, faulty: str, code: str):
    sim.set_bulk_faults(faulty, BulkFaults(fail=code))
    failed = wait(sim, faulty, start(sim, faulty, SMALL_BULK))
    assert (failed["status"], failed["errorCode"]) == ("FAILED", code)
    assert failed["url"] is None and failed["partialDataUrl"] is None and failed["objectCount"] == "100"


def test_timeout_with_partial_data(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(fail="TIMEOUT", partial_data=True, fail_at=0.1))
    failed = wait(sim, faulty, start(sim, faulty, SMALL_BULK))
    assert failed["errorCode"] == "TIMEOUT" and len(download(failed["partialDataUrl"]).content.splitlines()) == 20


def test_access_denied_by_fault_and_by_a_missing_scope(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(fail="ACCESS_DENIED", root_field="orders"))
    failed = wait(sim, faulty, start(sim, faulty, SMALL_BULK))
    assert (failed["status"], failed["errorCode"], failed["objectCount"]) == ("FAILED", "ACCESS_DENIED", "0")
    products = wait(sim, faulty, start(sim, faulty, "{ products { edges { node { id } } } }"))
    assert products["status"] == "COMPLETED", "root_field limits the fault to orders"
    sim.set_bulk_faults(faulty, BulkFaults())
    sim.set_scopes(faulty, ("read_orders", "read_products"))
    try:
        denied = wait(sim, faulty, start(sim, faulty, "{ customers { edges { node { id } } } }"))
        assert (denied["status"], denied["errorCode"]) == ("FAILED", "ACCESS_DENIED")
    finally:
        sim.set_scopes(faulty, ("read_orders", "read_all_orders", "read_products", "read_customers"))


def test_stuck_running_forever(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(stuck=True, fail_at=0.25))
    operation_id = start(sim, faulty, SMALL_BULK)
    deadline = time.monotonic() + 30
    while poll(sim, faulty, operation_id)["objectCount"] != "50":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # 25 simulated seconds: far longer than 200 objects need
    states = {(state["status"], state["objectCount"]) for state in (poll(sim, faulty, operation_id) for _ in range(5))}
    assert states == {("RUNNING", "50")}
    cancel(sim, faulty, operation_id)
    assert wait(sim, faulty, operation_id)["status"] == "CANCELED"


def test_an_operation_past_its_maximum_duration_fails_with_timeout(sim: Simulator):
    sim.set_bulk_faults("limited", BulkFaults(stuck=True))
    try:
        failed = wait(sim, "limited", start(sim, "limited", SMALL_BULK))
    finally:
        sim.set_bulk_faults("limited", BulkFaults())
    assert (failed["status"], failed["errorCode"], failed["url"]) == ("FAILED", "TIMEOUT", None)


def test_completed_with_a_null_url_but_objects(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(null_url=True))
    operation = wait(sim, faulty, start(sim, faulty, SMALL_BULK))
    assert operation["status"] == "COMPLETED" and operation["url"] is None and operation["objectCount"] == "200"
    assert operation["fileSize"] is None


def test_fault_times_apply_to_the_next_operations_only(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(null_url=True, times=2))
    states = [wait(sim, faulty, start(sim, faulty, SMALL_BULK))["url"] is None for _ in range(3)]
    assert states == [True, True, False]


# -- the result download ----------------------------------------------------------------------------------


def test_range_requests_resume_with_identical_bytes(sim: Simulator):
    operation, whole = completed_rows(sim, "main", ORDERS_BULK)
    answer = download(operation["url"])
    assert answer.headers["Accept-Ranges"] == "bytes" and answer.headers["Content-Type"] == "application/jsonl"
    middle = len(whole) // 3
    tail = download(operation["url"], Range=f"bytes={middle}-")
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == f"bytes {middle}-{len(whole) - 1}/{len(whole)}"
    assert whole[:middle] + tail.content == whole
    window = download(operation["url"], Range="bytes=10-19")
    assert window.status_code == 206 and window.content == whole[10:20]
    past = download(operation["url"], Range=f"bytes={len(whole)}-")
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(whole)}"


def test_a_dropped_download_resumes_with_range(sim: Simulator, faulty: str):
    sim.set_bulk_faults(faulty, BulkFaults(drop_download_after_bytes=5000, drop_download_times=1))
    operation = wait(sim, faulty, start(sim, faulty, ORDERS_BULK))
    received = b""
    answer = requests.get(operation["url"], stream=True, timeout=30)
    assert answer.status_code == 200 and int(answer.headers["Content-Length"]) > 5000
    with pytest.raises(requests.exceptions.RequestException):  # the drop comes mid-stream
        for chunk in answer.iter_content(1024):
            received += chunk
    # The server sent 5000 bytes; the client may lose its last partial read, so it resumes from what it kept.
    assert 0 < len(received) <= 5000
    rest = download(operation["url"], Range=f"bytes={len(received)}-")
    assert rest.status_code == 206
    whole = download(operation["url"]).content
    assert received + rest.content == whole and len(whole) == int(operation["fileSize"])
    assert sim.stats(faulty)["faults_served"].get("bulk_drop") == 1


def test_expired_urls_are_403_and_the_operation_expired(sim: Simulator):
    operation = wait(sim, "expiring", start(sim, "expiring", SMALL_BULK))
    assert download(operation["url"]).status_code == 200
    time.sleep(1.0)  # 40 simulated seconds: past the shop's url_expiry_seconds
    expired = download(operation["url"])
    assert expired.status_code == 403 and b"Request has expired" in expired.content
    assert poll(sim, "expiring", operation["id"])["status"] == "EXPIRED"


def test_expire_bulk_urls_on_demand(sim: Simulator):
    operation = wait(sim, "old", start(sim, "old", SMALL_BULK))
    assert sim.expire_bulk_urls("old")
    assert download(operation["url"]).status_code == 403
    assert poll(sim, "old", operation["id"])["status"] == "EXPIRED"


def test_a_tampered_url_is_403_and_no_shopify_token_is_needed(sim: Simulator):
    operation = wait(sim, "old", start(sim, "old", SMALL_BULK))
    assert download(operation["url"]).status_code == 200
    assert download(operation["url"][:-4] + "0000").status_code == 403
    assert download(operation["url"].split("?")[0]).status_code == 403


def test_the_admin_api_sets_bulk_faults_and_lists_operations(sim: Simulator, faulty: str):
    base = f"{sim.base_url}/_simulator/shops/{faulty}"
    assert requests.post(f"{base}/bulk_faults", json={"null_url": True, "times": 1}, timeout=10).json()["times"] == 1
    assert requests.post(f"{base}/bulk_faults", json={"nope": 1}, timeout=10).status_code == 400
    operation = wait(sim, faulty, start(sim, faulty, SMALL_BULK))
    assert operation["url"] is None
    listed = requests.get(f"{base}/bulk", timeout=10).json()["bulk_operations"]
    assert listed[-1]["id"] == operation["id"] and listed[-1]["status"] == "COMPLETED"
    assert requests.post(f"{base}/bulk_expire", timeout=10).json()["expired"][-1] == operation["id"]


def test_bulk_settings_load_from_a_config_file():
    config = ShopConfig.from_dict({"name": "x", "token": "t", "bulk": {"concurrency": 2, "url_expiry_seconds": 60,
                                                                         "faults": {"stuck": True, "times": 1}}})
    assert config.bulk == BulkConfig(concurrency=2, url_expiry_seconds=60, faults=BulkFaults(stuck=True, times=1))
    with pytest.raises(ValueError, match="unknown bulk fault fields"):
        BulkFaults.from_dict({"stuk": True})
    with pytest.raises(ValueError, match="unknown bulk errorCode"):
        BulkFaults(fail="OOPS")


def test_a_cut_answer_still_creates_the_operation(sim: Simulator):
    sim.set_faults("old", FaultConfig(rules=(FaultRule("truncate", endpoint="graphql:bulkOperationRunQuery"),)))
    try:
        with pytest.raises(requests.exceptions.RequestException):
            post(sim, "old", RUN, {"query": SMALL_BULK, "group": None})
    finally:
        sim.set_faults("old", FaultConfig())
    current = post(sim, "old", "{ currentBulkOperation { id } }")["data"]["currentBulkOperation"]
    assert current["id"] == sim.bulk_operations("old")[-1]["id"]
    wait(sim, "old", current["id"])


# -- bulkOperations ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(sim: Simulator) -> list[str]:
    """The operations of shop "listing", oldest first: completed, canceled, then two running for good, created
    in a later second than the others so that `created_at` can tell them apart."""
    completed = start(sim, "listing", SMALL_BULK)
    wait(sim, "listing", completed)
    sim.set_bulk_faults("listing", BulkFaults(stuck=True))
    canceled = start(sim, "listing", SMALL_BULK)
    cancel(sim, "listing", canceled)
    wait(sim, "listing", canceled)
    time.sleep(1.05 - time.time() % 1)
    running = [start(sim, "listing", SMALL_BULK) for _ in range(2)]
    sim.set_bulk_faults("listing", BulkFaults())
    for operation_id in running:
        wait(sim, "listing", operation_id, until=("RUNNING",))
    return [completed, canceled, *running]


def test_bulk_operations_lists_the_shops_own_newest_first_as_bulk_operation_shows_them(sim: Simulator,
                                                                                       listed: list[str]):
    other = wait(sim, "old", start(sim, "old", SMALL_BULK))["id"]
    page = listing(sim, "listing", first=10)
    nodes = [edge["node"] for edge in page["edges"]]
    assert [node["id"] for node in nodes] == listed[::-1], "newest first, and only this shop's"
    assert [node["status"] for node in nodes] == ["RUNNING", "RUNNING", "CANCELED", "COMPLETED"]
    assert nodes[3] == poll(sim, "listing", listed[0]) and nodes[3]["url"] is not None
    assert nodes[2] == poll(sim, "listing", listed[1])
    assert all(node["query"] == SMALL_BULK and node["type"] == "QUERY" for node in nodes)
    assert page["pageInfo"]["hasNextPage"] is False and page["pageInfo"]["hasPreviousPage"] is False
    assert listed_ids(sim, "listing", reverse=True) == listed
    assert other in listed_ids(sim, "old") and not set(listed) & set(listed_ids(sim, "old"))


@pytest.mark.parametrize(("query", "expected"), [
    ("status:running", [3, 2]),
    ("status:RUNNING", [3, 2]),
    ("status:canceled", [1]),
    ("status:completed AND operation_type:query", [0]),
    ("status:failed", []),
    ("operation_type:mutation", []),
    ("operation_type:query status:running", [3, 2]),
])
def test_bulk_operations_filters_by_status_and_type(sim: Simulator, listed: list[str], query: str,
                                                    expected: list[int]):
    assert listed_ids(sim, "listing", query=query) == [listed[index] for index in expected]


def test_bulk_operations_filters_by_created_at(sim: Simulator, listed: list[str]):
    created = {node["id"]: node["createdAt"] for node in
               (edge["node"] for edge in listing(sim, "listing", first=10)["edges"])}
    newest_first, boundary = listed[::-1], created[listed[2]]
    assert listed_ids(sim, "listing", query=f"created_at:>='{boundary}'") == listed[:1:-1]
    assert listed_ids(sim, "listing", query=f"created_at:<'{boundary}'") == [listed[1], listed[0]]
    assert listed_ids(sim, "listing", query=f"created_at:>'{created[listed[3]]}'") == []
    oldest = created[listed[0]]
    assert listed_ids(sim, "listing", query=f"created_at:<='{oldest}' AND status:completed") == [listed[0]]
    assert listed_ids(sim, "listing", query=f"created_at:<='{oldest}'") == [
        operation_id for operation_id in newest_first if created[operation_id] <= oldest]
    assert listed_ids(sim, "listing", query="created_at:<'2000-01-01T00:00:00Z'") == []


def test_bulk_operations_pages_with_cursors(sim: Simulator, listed: list[str]):
    seen, after, pages = [], None, 0
    while True:
        page = listing(sim, "listing", first=1, after=after)
        pages += 1
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == listed[::-1] and pages == 4
    filtered = listing(sim, "listing", first=1, query="status:running")
    rest = listing(sim, "listing", first=5, query="status:running", after=filtered["pageInfo"]["endCursor"])
    assert [edge["node"]["id"] for edge in rest["edges"]] == [listed[2]] and not rest["pageInfo"]["hasNextPage"]
    tail = listing(sim, "listing", last=2)
    assert [edge["node"]["id"] for edge in tail["edges"]] == [listed[1], listed[0]]
    assert tail["pageInfo"]["hasPreviousPage"] and not tail["pageInfo"]["hasNextPage"]
    before = listing(sim, "listing", last=1, before=tail["edges"][0]["cursor"])
    assert [edge["node"]["id"] for edge in before["edges"]] == [listed[2]] and before["pageInfo"]["hasNextPage"]
    mismatched = post(sim, "listing", LIST, {"first": 1, "after": after, "reverse": True})
    assert mismatched["errors"][0]["message"] == "Invalid cursor for current pagination sort."


def test_bulk_operations_sort_by_completed_at(sim: Simulator, listed: list[str]):
    assert listed_ids(sim, "listing", sortKey="COMPLETED_AT") == [listed[0], listed[3], listed[2], listed[1]]
    assert listed_ids(sim, "listing", sortKey="COMPLETED_AT", reverse=True) == [*listed[1:], listed[0]]


def test_bulk_operations_cost_like_a_connection(sim: Simulator, listed: list[str]):
    answer = post(sim, "listing", "{ bulkOperations(first: 3) { nodes { id status } } }")
    assert answer["extensions"]["cost"]["requestedQueryCost"] == 5
    assert answer["extensions"]["cost"]["actualQueryCost"] == 5
    none = post(sim, "listing", '{ bulkOperations(first: 10, query: "status:failed") { edges { node { id } } } }')
    assert none["extensions"]["cost"]["requestedQueryCost"] == 12
    assert none["extensions"]["cost"]["actualQueryCost"] == 2


@pytest.mark.parametrize(("arguments", "message"), [
    ("", "you must provide one of first or last"),
    ("first: 251", "The page size `first` must be between 0 and 250, got 251."),
    ('first: 5, query: "status:running OR status:created"', "The simulator's search supports only"),
    ('first: 5, after: "bm9wZQ"', "Invalid cursor: bm9wZQ"),
])
def test_bulk_operations_refuses_what_it_cannot_answer(sim: Simulator, arguments: str, message: str):
    answer = post(sim, "listing", f"{{ bulkOperations{f'({arguments})' if arguments else ''} {{ nodes {{ id }} }} }}")
    assert answer["errors"][0]["message"].startswith(message), answer
