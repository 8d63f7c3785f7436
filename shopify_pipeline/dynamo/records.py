"""Reading records back from a record table (checks, tests, the CLI)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from botocore.exceptions import ClientError

from shopify_pipeline.dynamo.client import DynamoThrottledError, error_code, translate_errors
from shopify_pipeline.dynamo.codec import decode_record, document_key, encode_record
from shopify_pipeline.dynamo.state import BlobStore
from shopify_pipeline.settings import Settings


class RecordTable:
    """The stored Shopify documents of one data type."""

    def __init__(self, client, settings: Settings, data_type: str) -> None:
        self._client = client
        self._table = settings.tables.records(data_type)
        self._blobs = BlobStore(client, settings)

    def get(self, user_id: str, record_id: int) -> dict | None:
        """One document, or None."""
        with translate_errors(self._table, self._client.meta.endpoint_url):
            item = self._client.get_item(
                TableName=self._table, Key={"userId": {"S": user_id}, "id": {"N": str(record_id)}},
                ConsistentRead=True,
            ).get("Item")
        return decode_record(item, self._table, self._blobs.read_chunks) if item else None

    def items(self, user_id: str, attributes: list[str] | None = None) -> Iterator[dict]:
        """The raw items of `user_id` in id order (optionally only some attributes)."""
        kwargs = {
            "TableName": self._table, "ConsistentRead": True,
            "KeyConditionExpression": "userId = :u", "ExpressionAttributeValues": {":u": {"S": user_id}},
        }
        if attributes:
            kwargs["ProjectionExpression"] = ", ".join(f"#a{i}" for i in range(len(attributes)))
            kwargs["ExpressionAttributeNames"] = {f"#a{i}": a for i, a in enumerate(attributes)}
        while True:
            with translate_errors(self._table, self._client.meta.endpoint_url):
                page = self._client.query(**kwargs)
            yield from page["Items"]
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def documents(self, user_id: str) -> Iterator[dict]:
        """Every stored document of `user_id`, decoded, in id order."""
        for item in self.items(user_id):
            yield decode_record(item, self._table, self._blobs.read_chunks)

    def count(self, user_id: str, not_shape: str | None = None) -> int:
        """How many records the user has; with `not_shape`, only those of another shape (items written before
        shapes existed have no `shape` attribute: they are REST documents)."""
        kwargs = {
            "TableName": self._table, "Select": "COUNT", "ConsistentRead": True,
            "KeyConditionExpression": "userId = :u", "ExpressionAttributeValues": {":u": {"S": user_id}},
        }
        if not_shape is not None:
            kwargs["ExpressionAttributeValues"][":s"] = {"S": not_shape}
            if not_shape == "rest":
                kwargs["FilterExpression"] = "attribute_exists(shape) AND shape <> :s"
            else:
                kwargs["FilterExpression"] = "attribute_not_exists(shape) OR shape <> :s"
        total = 0
        while True:
            with translate_errors(self._table, self._client.meta.endpoint_url):
                page = self._client.query(**kwargs)
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                return total
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class StaleChangeError(Exception):  # noqa: N818 - an outcome, not a failure: the caller reports it
    """A change older than the stored record, or of a record deleted since (its tombstone stands)."""


class RecordChanges:
    """Single-record changes from webhooks, safe against Shopify's at-least-once, unordered delivery:

    - an upsert lands only if the stored copy is not newer (`updatedAt`) and the record has no tombstone;
    - a delete removes the record and writes a tombstone (`tombstone_{type}_{id}` in `sync_checkpoints`, with a
      TTL longer than Shopify's retries) in one transaction, so a late `update` cannot bring it back.
    Syncs write records in batches and do not look at tombstones: a deleted record a sync still saw is
    removed by that sync's deletion events or the next one.
    """

    TOMBSTONE_DAYS = 30  # Shopify retries a delivery for 4 hours; a stale one cannot come later than this

    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def _tombstone_key(self, user_id: str, data_type: str, record_id: int) -> dict:
        return {"userId": {"S": user_id}, "syncType": {"S": f"tombstone_{data_type}_{record_id}"}}

    def upsert(self, user_id: str, data_type: str, doc: dict) -> None:
        """Store `doc` unless the stored copy is newer or the record was deleted (StaleChangeError)."""
        table = self._settings.tables.records(data_type)
        encoded = encode_record(table, user_id, data_type, doc, self._settings.max_item_bytes,
                                native=self._settings.document_format == "native")
        stored = self._stored(table, user_id, encoded.record_id)
        if encoded.chunks:
            # Chunks are written outside the transaction: never over the chunks of a newer stored copy.
            if stored and stored.get("updatedAt", {}).get("S", "") > encoded.item.get("updatedAt", {}).get("S", ""):
                raise StaleChangeError(f"{data_type} {encoded.record_id}: the stored copy is newer")
            with translate_errors(self._settings.tables.documents, self._client.meta.endpoint_url):
                for chunk in encoded.chunks:  # chunks first: the record item never points at missing chunks
                    self._client.put_item(TableName=self._settings.tables.documents, Item=chunk)
        condition = "attribute_not_exists(id)"
        values = {}
        if "updatedAt" in encoded.item:
            condition += " OR attribute_not_exists(updatedAt) OR updatedAt <= :u"
            values[":u"] = encoded.item["updatedAt"]
        put = {"TableName": table, "Item": encoded.item, "ConditionExpression": condition}
        if values:
            put["ExpressionAttributeValues"] = values
        self._transact(table, [
            {"ConditionCheck": {"TableName": self._settings.tables.checkpoints,
                                "Key": self._tombstone_key(user_id, data_type, encoded.record_id),
                                "ConditionExpression": "attribute_not_exists(userId)"}},
            {"Put": put},
        ], f"{data_type} {encoded.record_id}")
        self._drop_chunks(table, user_id, encoded.record_id, stored, keep=len(encoded.chunks))

    def delete(self, user_id: str, data_type: str, record_id: int, deleted_at: str) -> None:
        """Delete the record and leave its tombstone (both or neither)."""
        table = self._settings.tables.records(data_type)
        ttl = int(time.time()) + self.TOMBSTONE_DAYS * 86_400
        stored = self._stored(table, user_id, record_id)
        self._transact(table, [
            {"Put": {"TableName": self._settings.tables.checkpoints,
                     "Item": {**self._tombstone_key(user_id, data_type, record_id), "deletedAt": {"S": deleted_at},
                              "ttl": {"N": str(ttl)}}}},
            {"Delete": {"TableName": table, "Key": {"userId": {"S": user_id}, "id": {"N": str(record_id)}}}},
        ], f"{data_type} {record_id}")
        self._drop_chunks(table, user_id, record_id, stored, keep=0)

    def _stored(self, table: str, user_id: str, record_id: int) -> dict | None:
        with translate_errors(table, self._client.meta.endpoint_url):
            return self._client.get_item(TableName=table, ConsistentRead=True,
                                         ProjectionExpression="updatedAt, docChunks",
                                         Key={"userId": {"S": user_id}, "id": {"N": str(record_id)}}).get("Item")

    def _drop_chunks(self, table: str, user_id: str, record_id: int, stored: dict | None, keep: int) -> None:
        """Delete the chunks of the copy replaced (or deleted) beyond the `keep` the new copy uses."""
        had = int((stored or {}).get("docChunks", {}).get("N", "0"))
        key = document_key(table, user_id, record_id)
        with translate_errors(self._settings.tables.documents, self._client.meta.endpoint_url):
            for chunk in range(keep, had):
                self._client.delete_item(TableName=self._settings.tables.documents,
                                         Key={"documentKey": {"S": key}, "chunk": {"N": str(chunk)}})

    def deleted(self, user_id: str, data_type: str, record_id: int) -> bool:
        with translate_errors(self._settings.tables.checkpoints, self._client.meta.endpoint_url):
            found = self._client.get_item(TableName=self._settings.tables.checkpoints, ConsistentRead=True,
                                          Key=self._tombstone_key(user_id, data_type, record_id)).get("Item")
        return found is not None

    def _transact(self, table: str, items: list[dict], what: str) -> None:
        with translate_errors(table, self._client.meta.endpoint_url):
            try:
                self._client.transact_write_items(TransactItems=items)
            except ClientError as error:
                reasons = [r.get("Code") for r in error.response.get("CancellationReasons", [])]
                if error_code(error) == "TransactionCanceledException" and "ConditionalCheckFailed" in reasons:
                    raise StaleChangeError(f"{what}: the stored copy is newer, or the record was deleted") from None
                if error_code(error) == "TransactionCanceledException" and "TransactionConflict" in reasons:
                    raise DynamoThrottledError(f"{what}: a concurrent change of the same record; try again") from None
                raise
