"""The codec keeps every digit and byte, and never builds an item over DynamoDB's limit."""

import random
import string
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shopify_pipeline.dynamo.batch_writer import BatchWriter
from shopify_pipeline.dynamo.codec import (
    dumps_json,
    encode_record,
    item_size,
    parse_json,
    to_utc,
)
from shopify_pipeline.dynamo.records import RecordTable

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FRACTIONS = st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Decimal(repr(f)))
SCALARS = st.none() | st.booleans() | INT64 | FRACTIONS | st.text(max_size=30)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
DOCUMENTS = st.builds(
    lambda record_id, body: {**body, "id": record_id},
    st.integers(min_value=1, max_value=2**63 - 1),
    st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k != "id"), JSON_VALUES, max_size=8),
)


def test_parse_keeps_big_ids_and_fractions_exact():
    doc = parse_json('{"id": 820982911946154508, "rate": 0.06, "lat": 45.41634, "n": null, "s": ""}')
    assert doc["id"] == 820982911946154508 and isinstance(doc["id"], int)
    assert doc["rate"] == Decimal("0.06")
    assert parse_json(dumps_json(doc)) == doc


def test_timestamps_are_normalised_to_utc():
    assert to_utc("2008-01-10T11:00:00-05:00") == "2008-01-10T16:00:00Z"
    assert to_utc("2008-01-10T16:00:00Z") == "2008-01-10T16:00:00Z"
    assert to_utc(None) is None


@given(DOCUMENTS)
def test_json_text_round_trip(doc):
    assert parse_json(dumps_json(doc)) == doc


@pytest.mark.parametrize("document_format", ["native", "compressed"])
@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCUMENTS)
def test_documents_round_trip_through_dynamodb_local(settings, client, document_format, doc):
    writer = BatchWriter(client, replace(settings, document_format=document_format), workers=1)
    report = writer.write_records("u1", "orders", [doc])
    assert report.written == 1 and not report.failed_batches
    assert RecordTable(client, settings, "orders").get("u1", doc["id"]) == doc


def _big_order(size_bytes: int, compressible: bool) -> dict:
    rng = random.Random(size_bytes)
    line_items, total = [], 0
    while total < size_bytes:
        title = "".join(rng.choices(string.ascii_letters + "éß漢", k=200)) if not compressible else "Widget " * 20
        line_items.append({"id": 2**60 + len(line_items), "title": title, "price": "19.99",
                           "tax_lines": [{"rate": Decimal("0.06"), "price": "1.20"}]})
        total += len(dumps_json(line_items[-1]))
    return {"id": 820982911946154508, "created_at": "2024-01-10T11:00:00-05:00",
            "updated_at": "2024-01-11T11:00:00-05:00", "line_items": line_items, "total_price": "598.94"}


def test_a_2_mb_document_round_trips_exactly_in_chunks(settings, client):
    doc = _big_order(2_000_000, compressible=False)
    encoded = encode_record(settings.tables.orders, "u1", "orders", doc, settings.max_item_bytes)
    assert len(encoded.chunks) >= 2, "random text does not compress below the limit: it must be chunked"
    for item in [encoded.item, *encoded.chunks]:
        assert item_size(item) <= settings.max_item_bytes < 400 * 1024
    report = BatchWriter(client, settings).write_records("u1", "orders", [doc])
    assert report.written == 1
    assert RecordTable(client, settings, "orders").get("u1", doc["id"]) == doc


def test_a_large_compressible_order_is_stored_compressed_in_one_item(settings, client):
    doc = _big_order(600_000, compressible=True)
    encoded = encode_record(settings.tables.orders, "u1", "orders", doc, settings.max_item_bytes)
    assert "docZ" in encoded.item and not encoded.chunks
    BatchWriter(client, settings).write_records("u1", "orders", [doc])
    assert RecordTable(client, settings, "orders").get("u1", doc["id"]) == doc


def test_small_orders_can_be_stored_natively_with_query_attributes(settings, client):
    settings = replace(settings, document_format="native")
    doc = parse_json('{"id": 9007199254740993, "name": "#1001", "email": "a@b.c", "financial_status": "paid",'
                     ' "created_at": "2024-01-10T11:00:00-05:00", "updated_at": "2024-01-10T12:00:00-05:00",'
                     ' "cancelled_at": null, "tags": "a, b", "tax_lines": [{"rate": 0.06}]}')
    BatchWriter(client, settings).write_records("u1", "orders", [doc])
    item = next(RecordTable(client, settings, "orders").items("u1"))
    assert item["id"] == {"N": "9007199254740993"}
    assert item["updatedAt"] == {"S": "2024-01-10T17:00:00Z"}
    assert item["financialStatus"] == {"S": "paid"} and "cancelledAt" not in item
    assert item["doc"]["M"]["tax_lines"]["L"][0]["M"]["rate"] == {"N": "0.06"}


def test_by_default_documents_are_compressed_beside_their_query_attributes(settings, client):
    doc = {"id": 1, "email": "a@b.c", "updated_at": "2024-01-10T12:00:00-05:00", "note": "é" * 100}
    BatchWriter(client, settings).write_records("u1", "customers", [doc])
    item = next(RecordTable(client, settings, "customers").items("u1"))
    assert "docZ" in item and "doc" not in item and item["email"] == {"S": "a@b.c"}
    assert RecordTable(client, settings, "customers").get("u1", 1) == doc
