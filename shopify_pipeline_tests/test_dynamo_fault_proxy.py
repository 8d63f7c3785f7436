"""The fault proxy against a real DynamoDB Local: it passes requests through untouched, and its faults
look to boto3 exactly like DynamoDB's own (same errors, same retries, resendable UnprocessedItems)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from shopify_pipeline_tests.support.dynamo_fault_proxy import DynamoFaultProxy

# In botocore's retries dict `max_attempts` counts retries after the first try (1 means two attempts);
# `total_max_attempts` counts every attempt, so 1 really disables retries.
NO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}
STANDARD_RETRIES = {"total_max_attempts": 3, "mode": "standard"}


@pytest.fixture(scope="module")
def dynamodb(dynamodb_endpoint: str) -> SimpleNamespace:
    """The session's DynamoDB Local (conftest.py), as an object with `endpoint_url`."""
    return SimpleNamespace(endpoint_url=dynamodb_endpoint)


@pytest.fixture
def proxy(dynamodb: SimpleNamespace) -> Iterator[DynamoFaultProxy]:
    with DynamoFaultProxy(dynamodb.endpoint_url) as running:
        yield running


@pytest.fixture
def table(dynamodb: SimpleNamespace) -> str:
    """A fresh table, created directly on DynamoDB Local so the proxy's counters start at zero."""
    name = f"orders-{uuid.uuid4().hex[:8]}"
    create_table(client(dynamodb.endpoint_url), name)
    return name


def client(endpoint_url: str, retries: dict | None = None):
    return boto3.client(
        "dynamodb", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
        config=Config(retries=retries or NO_RETRIES, connect_timeout=5, read_timeout=10),
    )


def create_table(ddb, name: str) -> None:
    ddb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )


def puts(count: int) -> list[dict]:
    return [{"PutRequest": {"Item": {"pk": {"S": f"item-{i:02d}"}}}} for i in range(count)]


def stored_keys(dynamodb: SimpleNamespace, table: str) -> list[str]:
    items = client(dynamodb.endpoint_url).scan(TableName=table)["Items"]
    return sorted(item["pk"]["S"] for item in items)


def test_plain_operations_pass_through(proxy: DynamoFaultProxy, dynamodb: SimpleNamespace) -> None:
    ddb = client(proxy.endpoint_url)
    name = f"orders-{uuid.uuid4().hex[:8]}"
    create_table(ddb, name)
    ddb.put_item(TableName=name, Item={"pk": {"S": "single"}, "total": {"N": "12.5"}})
    assert ddb.get_item(TableName=name, Key={"pk": {"S": "single"}})["Item"]["total"] == {"N": "12.5"}

    response = ddb.batch_write_item(RequestItems={name: puts(25)})

    assert response["UnprocessedItems"] == {}
    assert len(stored_keys(dynamodb, name)) == 26
    stats = proxy.stats
    assert {op: s.requests for op, s in stats.items()} == {
        "CreateTable": 1, "PutItem": 1, "GetItem": 1, "BatchWriteItem": 1,
    }
    assert stats["BatchWriteItem"].items_forwarded == 25
    assert stats["BatchWriteItem"].items_unprocessed == 0
    assert not any(s.faults for s in stats.values())


def test_unprocessed_forwards_the_first_k_and_returns_the_rest(
    proxy: DynamoFaultProxy, dynamodb: SimpleNamespace, table: str,
) -> None:
    proxy.add_fault("unprocessed", keep=10)
    requests = puts(25)

    response = client(proxy.endpoint_url).batch_write_item(RequestItems={table: requests})

    assert response["UnprocessedItems"] == {table: requests[10:]}
    assert stored_keys(dynamodb, table) == [f"item-{i:02d}" for i in range(10)]
    stats = proxy.stats["BatchWriteItem"]
    assert (stats.items_forwarded, stats.items_unprocessed, stats.faults) == (10, 15, {"unprocessed": 1})


def test_unprocessed_items_can_be_resent_until_done(
    proxy: DynamoFaultProxy, dynamodb: SimpleNamespace, table: str,
) -> None:
    proxy.add_fault("unprocessed", keep_fraction=0.4, count=2)
    ddb = client(proxy.endpoint_url)
    pending = {table: puts(25)}
    rounds = 0
    while pending:
        pending = ddb.batch_write_item(RequestItems=pending)["UnprocessedItems"]
        rounds += 1

    assert rounds == 3  # 25 -> 10 written, 15 -> 6 written, 9 -> all written
    assert len(stored_keys(dynamodb, table)) == 25
    stats = proxy.stats["BatchWriteItem"]
    assert (stats.items_forwarded, stats.items_unprocessed) == (25, 15 + 9)


@pytest.mark.parametrize(("kind", "code"), [
    ("throttle", "ProvisionedThroughputExceededException"),
    ("error_500", "InternalServerError"),
])
def test_error_without_retries_raises_dynamodbs_error(
    proxy: DynamoFaultProxy, dynamodb: SimpleNamespace, table: str, kind: str, code: str,
) -> None:
    proxy.add_fault(kind)

    with pytest.raises(ClientError) as raised:
        client(proxy.endpoint_url).batch_write_item(RequestItems={table: puts(25)})

    assert raised.value.response["Error"]["Code"] == code
    assert stored_keys(dynamodb, table) == []
    assert proxy.stats["BatchWriteItem"].faults == {kind: 1}


@pytest.mark.parametrize(("kind", "status"), [("throttle", 400), ("error_500", 500)])
def test_standard_retries_get_past_two_errors(
    proxy: DynamoFaultProxy, dynamodb: SimpleNamespace, table: str, kind: str, status: int,
) -> None:
    proxy.add_fault(kind, count=2)

    response = client(proxy.endpoint_url, STANDARD_RETRIES).batch_write_item(RequestItems={table: puts(25)})

    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert [entry.status for entry in proxy.log] == [status, status, 200]
    assert len(stored_keys(dynamodb, table)) == 25


def test_drop_without_retries_raises_a_connection_error(
    proxy: DynamoFaultProxy, dynamodb: SimpleNamespace, table: str,
) -> None:
    proxy.add_fault("drop")

    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client(proxy.endpoint_url).batch_write_item(RequestItems={table: puts(25)})

    assert stored_keys(dynamodb, table) == []
    assert [(entry.fault, entry.status) for entry in proxy.log] == [("drop", None)]


def test_standard_retries_get_past_a_dropped_connection(
    proxy: DynamoFaultProxy, dynamodb: SimpleNamespace, table: str,
) -> None:
    proxy.add_fault("drop", count=1)

    client(proxy.endpoint_url, STANDARD_RETRIES).batch_write_item(RequestItems={table: puts(25)})

    assert len(stored_keys(dynamodb, table)) == 25
    assert [entry.fault for entry in proxy.log] == ["drop", None]


def test_rules_apply_in_order_and_only_to_their_operation(proxy: DynamoFaultProxy, table: str) -> None:
    throttle = proxy.add_fault("throttle", count=1)
    proxy.add_fault("unprocessed", keep=5, count=1)
    ddb = client(proxy.endpoint_url)

    ddb.put_item(TableName=table, Item={"pk": {"S": "not-a-batch"}})
    with pytest.raises(ClientError):
        ddb.batch_write_item(RequestItems={table: puts(25)})
    partial = ddb.batch_write_item(RequestItems={table: puts(25)})
    whole = ddb.batch_write_item(RequestItems={table: puts(25)})

    assert len(partial["UnprocessedItems"][table]) == 20
    assert whole["UnprocessedItems"] == {}
    assert throttle.applied == 1 and throttle.exhausted
    assert [(e.operation, e.fault) for e in proxy.log] == [
        ("PutItem", None), ("BatchWriteItem", "throttle"),
        ("BatchWriteItem", "unprocessed"), ("BatchWriteItem", None),
    ]


def test_clear_faults_restores_pass_through(proxy: DynamoFaultProxy, table: str) -> None:
    proxy.add_fault("error_500", operation="*")
    ddb = client(proxy.endpoint_url)
    with pytest.raises(ClientError):
        ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})

    proxy.clear_faults()
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})

    assert proxy.stats["PutItem"].requests == 2
    assert proxy.stats["PutItem"].faults == {"error_500": 1}


def test_probability_is_repeatable_for_a_seed(dynamodb: SimpleNamespace, table: str) -> None:
    def faults_seen(seed: int) -> list[str | None]:
        with DynamoFaultProxy(dynamodb.endpoint_url, seed=seed) as proxy:
            proxy.add_fault("throttle", operation="GetItem", probability=0.5)
            ddb = client(proxy.endpoint_url)
            for _ in range(20):
                with contextlib.suppress(ClientError):
                    ddb.get_item(TableName=table, Key={"pk": {"S": "a"}})
            return [entry.fault for entry in proxy.log]

    first = faults_seen(seed=7)

    assert first == faults_seen(seed=7)
    assert 0 < first.count("throttle") < 20


def test_stop_ends_kept_alive_connections(dynamodb: SimpleNamespace) -> None:
    proxy = DynamoFaultProxy(dynamodb.endpoint_url).start()
    ddb = client(proxy.endpoint_url)
    ddb.list_tables()

    proxy.stop()

    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        ddb.list_tables()


@pytest.mark.parametrize("arguments", [
    {"kind": "timeout"},
    {"kind": "unprocessed", "operation": "PutItem"},
    {"kind": "throttle", "probability": 1.5},
    {"kind": "throttle", "count": -1},
])
def test_add_fault_rejects_what_it_cannot_do(arguments: dict) -> None:
    with pytest.raises(ValueError):
        DynamoFaultProxy("http://127.0.0.1:8000").add_fault(**arguments)
