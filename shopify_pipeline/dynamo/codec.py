"""Shopify JSON documents ↔ DynamoDB items, without losing a digit or a byte.

- JSON is parsed with `Decimal` for fractions and `int` for integers, never through float, so ids above
  2^53 and rates like 0.06 stay exact (boto3 rejects floats anyway).
- A record's item carries a few top-level attributes for querying and the whole document, stored
  natively as a map when it fits, else zlib-compressed, else compressed and split into chunk items in
  the documents table. No item we write exceeds `max_item_bytes` (below DynamoDB's 400 KB).
- Documents come in two shapes, as each API returns them: REST (`id` 450789469, `updated_at`) and GraphQL
  (`id` "gid://shopify/Order/450789469", `legacyResourceId` "450789469", `updatedAt`). Both are keyed by the
  same number, and their items carry the same query attributes and a `shape` attribute that says which.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from shopify_pipeline.exact_json import dumps_json, parse_json

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

CHUNK_BYTES = 350_000

REST = "rest"  # documents as the REST Admin API returns them: snake_case, integer ids
GRAPHQL = "graphql"  # as the GraphQL Admin API returns them: camelCase, gid:// ids, money bags
SHAPES = (GRAPHQL, REST)

# Top-level attributes copied beside the document so that people can query and filter on them, by shape:
# attribute -> where it is in a document. They are the same attributes, with the same kind of value, for
# both shapes (GraphQL's enums are stored in lower case, as REST spells them).
QUERY_ATTRIBUTES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    REST: {
        "orders": {
            "name": ("name",), "email": ("email",), "financialStatus": ("financial_status",),
            "fulfillmentStatus": ("fulfillment_status",), "totalPrice": ("total_price",),
            "currency": ("currency",), "cancelledAt": ("cancelled_at",), "closedAt": ("closed_at",),
        },
        "products": {"title": ("title",), "status": ("status",), "vendor": ("vendor",),
                     "productType": ("product_type",)},
        "customers": {"email": ("email",), "state": ("state",), "firstName": ("first_name",),
                      "lastName": ("last_name",)},
    },
    GRAPHQL: {
        "orders": {
            "name": ("name",), "email": ("email",), "financialStatus": ("displayFinancialStatus",),
            "fulfillmentStatus": ("displayFulfillmentStatus",),
            "totalPrice": ("totalPriceSet", "shopMoney", "amount"), "currency": ("currencyCode",),
            "cancelledAt": ("cancelledAt",), "closedAt": ("closedAt",),
        },
        "products": {"title": ("title",), "status": ("status",), "vendor": ("vendor",),
                     "productType": ("productType",)},
        "customers": {"email": ("email",), "state": ("state",), "firstName": ("firstName",),
                      "lastName": ("lastName",)},
    },
}
_ENUMS = {"financialStatus", "fulfillmentStatus", "status", "state"}  # GraphQL's PAID is REST's paid
_MOMENTS = {"cancelledAt", "closedAt"}  # in UTC, like createdAt and updatedAt, so that they sort
_TIMESTAMPS = {REST: ("created_at", "updated_at"), GRAPHQL: ("createdAt", "updatedAt")}
_GID = re.compile(r"^gid://shopify/[A-Za-z]+/([0-9]+)$", re.ASCII)


def shape_of(doc: dict) -> str:
    """`graphql` for a document with a `gid://` id, else `rest`."""
    record_id = doc.get("id")
    return GRAPHQL if isinstance(record_id, str) and record_id.startswith("gid://") else REST


def record_key(doc: dict) -> int:
    """A document's numeric id, the key of its item: REST's `id`, GraphQL's `legacyResourceId` (the same
    number for the same record). Raises UnkeyableRecordError when it has none that is a positive 64-bit integer."""
    if shape_of(doc) == REST:
        value = doc.get("id")
        key = value if isinstance(value, int) and not isinstance(value, bool) else None
        where = "id"
    else:
        value = doc.get("legacyResourceId")
        where = "legacyResourceId"
        # GraphQL's UnsignedInt64 is a string of digits; it must agree with the gid's number.
        key = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else (
            value if isinstance(value, int) and not isinstance(value, bool) else None)
        match = _GID.match(doc["id"])
        if key is not None and (match is None or int(match.group(1)) != key):
            raise UnkeyableRecordError("id", f"{doc['id'][:80]!r} does not name legacyResourceId {value!r}")
    if key is None:
        raise UnkeyableRecordError(where, "is missing" if value is None else
                                   f"is not an integer ({type(value).__name__})")
    if not 0 < key < 2**63:
        raise UnkeyableRecordError(where, "is not a positive 64-bit integer")
    return key


def timestamp_fields(doc: dict) -> tuple[str, str]:
    """The names of a document's created and updated timestamps (created_at or createdAt …)."""
    return _TIMESTAMPS[shape_of(doc)]


def updated_at(doc: dict) -> str | None:
    """A document's last update in UTC (`...Z`), whatever its shape."""
    return to_utc(doc.get(timestamp_fields(doc)[1]))


def query_attributes(data_type: str, doc: dict) -> dict:
    """The query attributes of `doc` as DynamoDB attribute values (absent or empty values are left out)."""
    attributes = {}
    for attribute, path in QUERY_ATTRIBUTES[shape_of(doc)].get(data_type, {}).items():
        value: Any = doc
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, (str, int, Decimal)) and not isinstance(value, bool) and value != "":
            if attribute in _ENUMS and isinstance(value, str):
                value = value.lower()
            if attribute in _MOMENTS:
                try:
                    value = to_utc(value)
                except (TypeError, ValueError, OverflowError):
                    continue  # not a time: left out rather than stored unsortable (the document keeps it)
            attributes[attribute] = serialize(value)
    return attributes


class CodecError(ValueError):
    """A document or item is not what the codec expects (no `id`, a corrupt chunk)."""


class UnkeyableRecordError(CodecError):
    """A document without a usable numeric id: `field` (id, legacyResourceId) and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"`{field}` {problem}")
        self.field, self.problem = field, problem


__all__ = ["GRAPHQL", "REST", "CodecError", "EncodedRecord", "decode_record", "dumps_json", "encode_record",
           "parse_json", "record_key", "shape_of", "updated_at"]


def compress(value: Any) -> bytes:
    return zlib.compress(dumps_json(value).encode(), 6)


def decompress(data: bytes) -> Any:
    return parse_json(zlib.decompress(data))


def to_utc(timestamp: str | None) -> str | None:
    """Shopify's local-offset timestamps as UTC ISO-8601 (`...Z`), so that they sort and compare."""
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def serialize(value: Any) -> dict:
    """One Python value as a DynamoDB attribute value (wire format)."""
    return _serializer.serialize(value)


def deserialize(attribute: dict) -> Any:
    """One DynamoDB attribute value as Python, integral numbers as int."""
    return _plain(_deserializer.deserialize(attribute))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)) or type(value).__name__ == "Binary":
        return bytes(value)
    return value


def item_size(item: dict) -> int:
    """An upper bound of DynamoDB's size of a wire-format item (its JSON, with type tags)."""
    return sum(len(name.encode()) + _wire_size(value) for name, value in item.items())


def _wire_size(attribute: dict) -> int:
    (kind, value), = attribute.items()
    if kind == "B":
        return len(value) + 3
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _wire_size(v) for k, v in value.items())
    if kind == "L":
        return 3 + sum(1 + _wire_size(v) for v in value)
    if kind in ("S", "N"):
        return len(value.encode()) + 1
    return 1


def _native_ok(value: Any) -> bool:
    """Whether DynamoDB can hold `value` as a native map: no empty map keys, and numbers within
    38 significant digits and magnitudes 1E-130 .. 1E+126. Anything else is stored compressed."""
    if isinstance(value, dict):
        return all(k != "" and _native_ok(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_native_ok(v) for v in value)
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, Decimal)):
        number = Decimal(value)
        if number.is_zero():
            return True
        return len(number.normalize().as_tuple().digits) <= 38 and -130 <= number.adjusted() <= 125
    return True


@dataclass
class EncodedRecord:
    """A record as items: `chunks` (documents table) must be written before `item` (record table)."""

    record_id: int
    item: dict
    chunks: list[dict] = field(default_factory=list)


def document_key(table: str, user_id: str, record_id: int) -> str:
    return f"{table}#{user_id}#{record_id}"


def encode_record(
    table: str, user_id: str, data_type: str, doc: dict, max_item_bytes: int = 380_000, native: bool = False
) -> EncodedRecord:
    """The items that store `doc` (a Shopify order, product or customer) for `user_id`.

    `native` stores the document as a DynamoDB map when it fits; otherwise (and by default) it is
    stored compressed, and split into chunk items when even that is too big.
    """
    try:
        record_id = record_key(doc)
    except UnkeyableRecordError as error:
        raise CodecError(f"a Shopify {data_type} record cannot be keyed ({error}): {dumps_json(doc)[:200]}") from None
    shape = shape_of(doc)
    item = {"userId": {"S": user_id}, "id": {"N": str(record_id)}, "shape": {"S": shape}}
    created_field, updated_field = _TIMESTAMPS[shape]
    for name, value in (("createdAt", to_utc(doc.get(created_field))), ("updatedAt", to_utc(doc.get(updated_field)))):
        if value:
            item[name] = {"S": value}
    item.update(query_attributes(data_type, doc))
    base_size = item_size(item)

    if native and _native_ok(doc):
        try:
            native = serialize(doc)
        except (TypeError, ValueError, ArithmeticError):  # a number beyond DynamoDB's 38 digits
            native = None
        if native is not None and base_size + 4 + _wire_size(native) <= max_item_bytes:
            return EncodedRecord(record_id, {**item, "doc": native})

    packed = compress(doc)
    if base_size + 5 + len(packed) + 3 <= max_item_bytes:
        return EncodedRecord(record_id, {**item, "docZ": {"B": packed}})

    key = document_key(table, user_id, record_id)
    chunks = chunk_items(key, packed)
    item.update(
        docChunks={"N": str(len(chunks))},
        docSha256={"S": hashlib.sha256(packed).hexdigest()},
    )
    return EncodedRecord(record_id, item, chunks)


def chunk_items(key: str, data: bytes, ttl: int | None = None) -> list[dict]:
    """`data` split into documents-table items of at most CHUNK_BYTES each."""
    items = []
    for number, start in enumerate(range(0, max(len(data), 1), CHUNK_BYTES)):
        chunk = {"documentKey": {"S": key}, "chunk": {"N": str(number)}, "data": {"B": data[start:start + CHUNK_BYTES]}}
        if ttl:
            chunk["ttl"] = {"N": str(ttl)}
        items.append(chunk)
    return items


def join_chunks(key: str, chunks: Iterable[dict], expected: int, sha256: str | None = None) -> bytes:
    """Reassemble what `chunk_items` split, checking count and digest."""
    ordered = sorted(chunks, key=lambda c: int(c["chunk"]["N"]))
    if len(ordered) != expected:
        raise CodecError(f"document {key} should have {expected} chunks, found {len(ordered)}")
    data = b"".join(bytes(_b(c["data"])) for c in ordered)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise CodecError(f"document {key} is corrupt: its chunks do not match the stored digest")
    return data


def _b(attribute: dict) -> bytes:
    value = attribute["B"]
    return value.value if hasattr(value, "value") else value


def decode_record(
    item: dict, table: str, read_chunks: Callable[[str, int], list[dict]] | None = None
) -> dict:
    """The Shopify document stored in an item of record table `table`.

    `read_chunks(key, count)` returns the chunk items of a chunked document.
    """
    if "doc" in item:
        return deserialize(item["doc"])
    if "docZ" in item:
        return decompress(bytes(_b(item["docZ"])))
    if "docChunks" in item:
        if read_chunks is None:
            raise CodecError("this record is chunked; pass read_chunks to decode it")
        count = int(item["docChunks"]["N"])
        key = document_key(table, item["userId"]["S"], int(item["id"]["N"]))
        data = join_chunks(key, read_chunks(key, count), count, item.get("docSha256", {}).get("S"))
        return decompress(data)
    raise CodecError(f"item {item.get('userId')}/{item.get('id')} holds no document")

