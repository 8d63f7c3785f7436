"""Reading records back from a record table (checks, tests, the CLI)."""

from __future__ import annotations

from collections.abc import Iterator

from shopify_pipeline.dynamo.client import translate_errors
from shopify_pipeline.dynamo.codec import decode_record
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
