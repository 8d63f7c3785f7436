"""The tables of DESIGN.md and an idempotent `create_tables`."""

from __future__ import annotations

from dataclasses import dataclass

from shopify_pipeline.dynamo.client import translate_errors
from shopify_pipeline.settings import TableNames


@dataclass(frozen=True)
class TableSpec:
    name: str
    hash_key: tuple[str, str]  # (attribute name, type S|N|B)
    range_key: tuple[str, str] | None = None
    ttl_attribute: str | None = None
    stream: str | None = None  # a DynamoDB Streams view type (NEW_AND_OLD_IMAGES, …): the table's changes feed a Lambda
    # Global secondary indexes: (name, hash key, range key), every attribute projected.
    indexes: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = ()


def table_specs(names: TableNames) -> list[TableSpec]:
    """Every table the pipeline uses, with its keys and TTL attribute."""
    records = [TableSpec(names.records(data_type), ("userId", "S"), ("id", "N")) for data_type in
               ("orders", "products", "customers")]
    return [
        TableSpec(names.checkpoints, ("userId", "S"), ("syncType", "S"), ttl_attribute="ttl"),
        *records,
        TableSpec(names.pages, ("syncKey", "S"), ("page", "N"), ttl_attribute="ttl"),
        TableSpec(names.connections, ("userId", "S")),
        TableSpec(names.documents, ("documentKey", "S"), ("chunk", "N"), ttl_attribute="ttl"),
        # Webhook deliveries already applied, the layout of Powertools' DynamoDB idempotency store.
        TableSpec(names.webhook_events, ("id", "S"), ttl_attribute="expiration"),
        # Webhook events accepted and not applied yet; in AWS its stream drives the applying Lambda.
        # Its index holds the pending items only (by when they are due): the sweep reads what waits, not the table.
        TableSpec(names.webhook_inbox, ("id", "S"), ttl_attribute="expiration", stream="NEW_AND_OLD_IMAGES",
                  indexes=(("due", ("queue", "S"), ("notBefore", "N")),)),
    ]


def create_tables(client, names: TableNames) -> dict[str, str]:
    """Create missing tables (on-demand billing), wait until ACTIVE, enable TTL.

    Returns {table name: "created" | "exists"}. Safe to run any number of times.
    """
    outcome: dict[str, str] = {}
    specs = table_specs(names)
    with translate_errors(names.checkpoints, client.meta.endpoint_url):
        existing = set(_list_tables(client))
    for spec in specs:
        with translate_errors(spec.name, client.meta.endpoint_url):
            if spec.name in existing:
                outcome[spec.name] = "exists"
                continue
            keys = [spec.hash_key] + ([spec.range_key] if spec.range_key else [])
            streams = ({"StreamSpecification": {"StreamEnabled": True, "StreamViewType": spec.stream}}
                       if spec.stream else {})
            indexes = {"GlobalSecondaryIndexes": [_index(index) for index in spec.indexes]} if spec.indexes else {}
            client.create_table(
                TableName=spec.name,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=_attributes(keys, spec),
                KeySchema=[
                    {"AttributeName": n, "KeyType": kind} for (n, _), kind in zip(keys, ("HASH", "RANGE"), strict=False)
                ],
                **streams,
                **indexes,
            )
            outcome[spec.name] = "created"
    for spec in specs:
        with translate_errors(spec.name, client.meta.endpoint_url):
            client.get_waiter("table_exists").wait(TableName=spec.name, WaiterConfig={"Delay": 1})
            if spec.ttl_attribute:
                _enable_ttl(client, spec.name, spec.ttl_attribute)
            if spec.stream and outcome[spec.name] == "exists":
                _enable_stream(client, spec.name, spec.stream)
            if spec.indexes and outcome[spec.name] == "exists":
                _add_indexes(client, spec)
    return outcome


def _list_tables(client) -> list[str]:
    names: list[str] = []
    for page in client.get_paginator("list_tables").paginate():
        names.extend(page["TableNames"])
    return names


def _enable_ttl(client, table: str, attribute: str) -> None:
    current = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
        return
    client.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute}
    )


def delete_tables(client, names: TableNames) -> None:
    """Delete every pipeline table that exists (tests and `--reset` only)."""
    existing = set(_list_tables(client))
    for spec in table_specs(names):
        if spec.name in existing:
            client.delete_table(TableName=spec.name)


def _enable_stream(client, table: str, view_type: str) -> None:
    """Turn on a table's stream when a table made by an older release has none."""
    current = client.describe_table(TableName=table)["Table"].get("StreamSpecification") or {}
    if current.get("StreamEnabled"):
        return
    client.update_table(TableName=table, StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type})


def _attributes(keys: list[tuple[str, str]], spec: TableSpec) -> list[dict]:
    """The attribute definitions of the table's keys and its indexes' keys, each once."""
    named = dict(keys)
    for _, hash_key, range_key in spec.indexes:
        named.update([hash_key, range_key])
    return [{"AttributeName": n, "AttributeType": t} for n, t in named.items()]


def _index(index: tuple[str, tuple[str, str], tuple[str, str]]) -> dict:
    name, (hash_name, _), (range_name, _) = index
    return {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": hash_name, "KeyType": "HASH"},
                          {"AttributeName": range_name, "KeyType": "RANGE"}]}


def _add_indexes(client, spec: TableSpec) -> None:
    """Create the indexes a table made by an older release lacks (one at a time, as DynamoDB allows)."""
    present = {i["IndexName"] for i in client.describe_table(TableName=spec.name)["Table"].get(
        "GlobalSecondaryIndexes", [])}
    for index in spec.indexes:
        if index[0] in present:
            continue
        client.update_table(TableName=spec.name, AttributeDefinitions=_attributes([spec.hash_key], spec),
                            GlobalSecondaryIndexUpdates=[{"Create": _index(index)}])
        client.get_waiter("table_exists").wait(TableName=spec.name, WaiterConfig={"Delay": 1})
