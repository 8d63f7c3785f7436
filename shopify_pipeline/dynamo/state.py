"""Durable sync state in the `sync_checkpoints` table (key `userId` + `syncType`).

One table holds every kind of state item; the sort key says which:

| sort key (`syncType`)          | item                                                      |
|--------------------------------|-----------------------------------------------------------|
| `{syncType}_checkpoint_{type}` | a checkpoint: cursors and counters, never records; TTL 7d |
| `{syncType}_failed_{type}`     | failed batches (as the seed): ranges + where records are  |
| `status_{type}`                | the durable sync status of one data type                  |
| `lease_{type}`                 | who is syncing this user's data type, until when (lease.py) |
| `bulk_finished_{number}`       | a bulk operation ended (its webhook; notices.py); TTL 7d  |

Blobs too big for one item (the records of a failed batch, large staged pages) live in the documents
table, compressed and chunked (see `BlobStore`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shopify_pipeline.dynamo.client import ConditionFailedError, DynamoThrottledError, translate_errors, write_batch
from shopify_pipeline.dynamo.codec import (
    chunk_items,
    compress,
    decompress,
    deserialize,
    item_size,
    join_chunks,
    serialize,
)
from shopify_pipeline.dynamo.lease import Fence, LeaseHeldError, LeaseStore, fenced_write
from shopify_pipeline.errors import PermanentError
from shopify_pipeline.settings import CHECKPOINT_TTL_SECONDS, Settings

CHECKPOINT_SCHEMA = 1
# Statuses of a sync that has not ended; `fetched` is the pause between the fetch and the load step.
RUNNING = ("fetching", "fetched", "loading")

__all__ = ["Checkpoint", "CheckpointError", "LeaseHeldError", "StaleCheckpointError", "StateStore"]


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def checkpoint_key(sync_type: str, data_type: str) -> str:
    return f"{sync_type}_checkpoint_{data_type}"


def failed_key(sync_type: str, data_type: str) -> str:
    return f"{sync_type}_failed_{data_type}"


class CheckpointError(PermanentError):
    """A checkpoint item cannot be used as it is."""


class StaleCheckpointError(CheckpointError):
    """Someone saved a newer version of this checkpoint than the one we hold."""


@dataclass
class Checkpoint:
    """Where a sync of (user, sync type, data type) stands. `state` is the engine's, kept small."""

    user_id: str
    sync_type: str
    data_type: str
    state: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    updated_at: str | None = None


class BlobStore:
    """Bytes of any size under a key, compressed by the caller, split into items of the documents table."""

    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._table = settings.tables.documents

    def put(self, key: str, data: bytes, ttl_seconds: int | None = None) -> int:
        """Store `data` under `key`; returns the number of chunks (needed to read it back)."""
        ttl = int(time.time()) + ttl_seconds if ttl_seconds else None
        items = chunk_items(key, data, ttl)
        for start in range(0, len(items), 25):
            requests = {self._table: [{"PutRequest": {"Item": i}} for i in items[start:start + 25]]}
            with translate_errors(self._table, self._client.meta.endpoint_url):
                _, left = write_batch(self._client, requests, self._settings)
            if left:
                raise DynamoThrottledError(f"could not store blob {key}: DynamoDB kept items unprocessed")
        return len(items)

    def get(self, key: str, chunks: int, sha256: str | None = None) -> bytes:
        return join_chunks(key, self.read_chunks(key, chunks), chunks, sha256)

    def read_chunks(self, key: str, chunks: int) -> list[dict]:
        """The raw chunk items of `key` (consistent read)."""
        items: list[dict] = []
        kwargs = {
            "TableName": self._table, "ConsistentRead": True,
            "KeyConditionExpression": "documentKey = :k", "ExpressionAttributeValues": {":k": {"S": key}},
        }
        with translate_errors(self._table, self._client.meta.endpoint_url):
            while True:
                page = self._client.query(**kwargs)
                items.extend(page["Items"])
                if "LastEvaluatedKey" not in page:
                    return [i for i in items if int(i["chunk"]["N"]) < chunks]
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def delete(self, key: str, chunks: int) -> None:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            for number in range(chunks):
                self._client.delete_item(
                    TableName=self._table, Key={"documentKey": {"S": key}, "chunk": {"N": str(number)}}
                )


class StateStore:
    """Checkpoints, sync status, failed batches and leases of every user."""

    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._table = settings.tables.checkpoints
        self.blobs = BlobStore(client, settings)
        self.leases = LeaseStore(client, settings)

    def _write(self, fence: Fence | None, operation: str, **kwargs) -> None:
        """A write of this table, fenced by the caller's lease when it has one (see lease.py)."""
        fenced_write(self._client, fence, operation, TableName=self._table, **kwargs)

    def _call(self, operation: str, **kwargs) -> dict:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            return getattr(self._client, operation)(TableName=self._table, **kwargs)

    def _key(self, user_id: str, sort_key: str) -> dict:
        return {"userId": {"S": user_id}, "syncType": {"S": sort_key}}

    # Checkpoints -------------------------------------------------------------------------------

    def load_checkpoint(self, user_id: str, sync_type: str, data_type: str) -> Checkpoint | None:
        """The saved checkpoint, or None. Raises CheckpointError for an item we cannot read."""
        sort_key = checkpoint_key(sync_type, data_type)
        item = self._call("get_item", Key=self._key(user_id, sort_key), ConsistentRead=True).get("Item")
        if item is None:
            return None
        clear_hint = (
            f"Clear it with `shopify-pipeline checkpoint clear --user {user_id} --sync-type {sync_type} "
            f"--data-type {data_type}`; the next sync then starts that data type from the beginning."
        )
        schema = item.get("schemaVersion", {}).get("N")
        if schema != str(CHECKPOINT_SCHEMA):
            raise CheckpointError(
                f"checkpoint {user_id}/{sort_key} has schema version {schema}, this code reads "
                f"{CHECKPOINT_SCHEMA}. {clear_hint}"
            )
        try:
            state = json.loads(item["state"]["S"])
            version = int(item["version"]["N"])
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {user_id}/{sort_key} is corrupt ({error!r}). {clear_hint}") from error
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {user_id}/{sort_key} is corrupt (state is not an object). {clear_hint}")
        return Checkpoint(user_id, sync_type, data_type, state, version, item.get("updatedAt", {}).get("S"))

    def save_checkpoint(self, checkpoint: Checkpoint, fence: Fence | None = None) -> Checkpoint:
        """Save with a version check (and, given a fence, only while its lease holds); returns the
        checkpoint at its new version.

        Raises StaleCheckpointError when the stored version is not the one `checkpoint` was read at,
        LeaseLostError when the fence's lease is gone.
        """
        sort_key = checkpoint_key(checkpoint.sync_type, checkpoint.data_type)
        state = json.dumps(checkpoint.state, separators=(",", ":"), sort_keys=True)
        updated_at = now_iso()
        item = {
            **self._key(checkpoint.user_id, sort_key),
            "dataType": {"S": checkpoint.data_type},
            "state": {"S": state},
            "version": {"N": str(checkpoint.version + 1)},
            "schemaVersion": {"N": str(CHECKPOINT_SCHEMA)},
            "updatedAt": {"S": updated_at},
            "ttl": {"N": str(int(time.time()) + CHECKPOINT_TTL_SECONDS)},
        }
        if checkpoint.version == 0:
            condition = {"ConditionExpression": "attribute_not_exists(userId)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": {"N": str(checkpoint.version)}},
            }
        try:
            self._write(fence, "put_item", Item=item, **condition)
        except ConditionFailedError as error:
            raise StaleCheckpointError(
                    f"checkpoint {checkpoint.user_id}/{sort_key} was saved by another writer since version "
                    f"{checkpoint.version}; this writer's progress is refused so that it cannot overwrite "
                    "newer progress. Only one sync per user and data type may run (see the lease)."
                ) from error
        return Checkpoint(
            checkpoint.user_id, checkpoint.sync_type, checkpoint.data_type, checkpoint.state,
            checkpoint.version + 1, updated_at,
        )

    def checkpoint_size(self, user_id: str, sync_type: str, data_type: str) -> int:
        """Bytes of the stored checkpoint item as DynamoDB counts them (names + values), 0 if none."""
        item = self._call(
            "get_item", Key=self._key(user_id, checkpoint_key(sync_type, data_type)), ConsistentRead=True
        ).get("Item")
        if not item:
            return 0
        return item_size(item)

    def has_checkpoint(self, user_id: str, sync_type: str, data_type: str) -> bool:
        """Whether a checkpoint item exists, readable or not."""
        key = self._key(user_id, checkpoint_key(sync_type, data_type))
        return "Item" in self._call("get_item", Key=key, ConsistentRead=True, ProjectionExpression="userId")

    def clear_checkpoint(self, user_id: str, sync_type: str, data_type: str, fence: Fence | None = None) -> None:
        self._write(fence, "delete_item", Key=self._key(user_id, checkpoint_key(sync_type, data_type)))

    # Status ------------------------------------------------------------------------------------

    def set_status(self, user_id: str, data_type: str, status: str, sync_type: str | None = None,
                   fence: Fence | None = None, **fields: Any) -> None:
        """Record the status of one data type's sync (written by the one sync that holds the lease:
        with its fence, a sync that lost the lease cannot overwrite the status of the one that has it).

        `fields` are free-form (stage, recordCount, page, message, error …); None values are left out.
        """
        record = {"status": status, "dataType": data_type, "sync": sync_type, "updatedAt": now_iso(), **fields}
        item = {**self._key(user_id, f"status_{data_type}")}
        item.update({k: serialize(v) for k, v in record.items() if v is not None})
        self._write(fence, "put_item", Item=item)

    def get_status(self, user_id: str) -> dict[str, dict]:
        """{data type: status fields} for every data type of `user_id` that has a status.

        The sync type is returned as `syncType` (stored as `sync`: `syncType` is the table's sort key).
        """
        out = {}
        for item in self._query_prefix(user_id, "status_"):
            fields = {k: deserialize(v) for k, v in item.items() if k not in ("userId", "syncType")}
            if "sync" in fields:
                fields["syncType"] = fields.pop("sync")
            out[fields["dataType"]] = fields
        return out

    def clear_status(self, user_id: str, data_type: str | None = None) -> int:
        """Delete the status items of `user_id` (one data type, or all). Returns how many were deleted."""
        items = self._query_prefix(user_id, f"status_{data_type or ''}")
        for item in items:
            self._call("delete_item", Key=self._key(user_id, item["syncType"]["S"]))
        return len(items)

    def _query_prefix(self, user_id: str, prefix: str) -> list[dict]:
        items: list[dict] = []
        kwargs = {
            "KeyConditionExpression": "userId = :u AND begins_with(syncType, :p)",
            "ExpressionAttributeValues": {":u": {"S": user_id}, ":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        while True:
            page = self._call("query", **kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # Failed batches ----------------------------------------------------------------------------

    def save_failed_batch(
        self, user_id: str, sync_type: str, data_type: str, first: int, last: int,
        records: list[dict], error: str, attempts: int, fence: Fence | None = None,
    ) -> str:
        """Keep a batch that could not be written: records in the blob store, its entry in the
        `{syncType}_failed_{dataType}` item. Returns the batch id."""
        batch_id = uuid.uuid4().hex[:12]
        blob_key = f"failed#{user_id}#{sync_type}#{data_type}#{batch_id}"
        chunks = self.blobs.put(blob_key, compress(records))
        entry = {
            "id": batch_id, "range": f"{first}-{last}", "count": len(records), "error": error[:1000],
            "attempts": attempts, "failedAt": now_iso(), "blobKey": blob_key, "chunks": chunks,
        }
        self._write(
            fence, "update_item",
            Key=self._key(user_id, failed_key(sync_type, data_type)),
            UpdateExpression="SET batches = list_append(if_not_exists(batches, :empty), :entry), "
            "dataType = :t, updatedAt = :now",
            ExpressionAttributeValues={
                ":empty": {"L": []}, ":entry": {"L": [serialize(entry)]},
                ":t": {"S": data_type}, ":now": {"S": entry["failedAt"]},
            },
        )
        return batch_id

    def failed_batches(self, user_id: str, sync_type: str, data_type: str) -> list[dict]:
        """The failed-batch entries (id, range, count, error, attempts, failedAt) of one sync."""
        item = self._call(
            "get_item", Key=self._key(user_id, failed_key(sync_type, data_type)), ConsistentRead=True
        ).get("Item")
        return deserialize(item["batches"]) if item and "batches" in item else []

    def failed_batch_records(self, entry: dict) -> list[dict]:
        return decompress(self.blobs.get(entry["blobKey"], int(entry["chunks"])))

    def remove_failed_batch(self, user_id: str, sync_type: str, data_type: str, batch_id: str,
                            fence: Fence | None = None) -> bool:
        """Drop one entry (after its records were written) and its blob. False if it was not there."""
        key = self._key(user_id, failed_key(sync_type, data_type))
        for index, entry in enumerate(self.failed_batches(user_id, sync_type, data_type)):
            if entry["id"] != batch_id:
                continue
            try:
                self._write(
                    fence, "update_item", Key=key, UpdateExpression=f"REMOVE batches[{index}]",
                    ConditionExpression=f"batches[{index}].id = :id",
                    ExpressionAttributeValues={":id": {"S": batch_id}},
                )
            except ConditionFailedError:
                return self.remove_failed_batch(user_id, sync_type, data_type, batch_id, fence)  # the list moved
            self.blobs.delete(entry["blobKey"], int(entry["chunks"]))
            return True
        return False

    def find_failed_batches(self, data_type: str, user_id: str | None = None) -> list[dict]:
        """Every failed-batch item for `data_type` (the seed's query on sort keys ending `_failed_{type}`)."""
        suffix = f"_failed_{data_type}"
        # Key attributes cannot be filtered in a Query: filter on what only failed-batch items carry.
        kwargs: dict[str, Any] = {
            "ConsistentRead": True, "FilterExpression": "attribute_exists(batches) AND dataType = :t",
        }
        values = {":t": {"S": data_type}}
        if user_id:
            kwargs["KeyConditionExpression"] = "userId = :u"
            values[":u"] = {"S": user_id}
        kwargs["ExpressionAttributeValues"] = values
        operation = "query" if user_id else "scan"
        items: list[dict] = []
        while True:
            page = self._call(operation, **kwargs)
            items.extend(i for i in page["Items"] if i["syncType"]["S"].endswith(suffix))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        found = [
            {"userId": i["userId"]["S"], "syncType": i["syncType"]["S"],
             "batches": deserialize(i["batches"]) if "batches" in i else []}
            for i in items
        ]
        return [f for f in found if f["batches"]]  # an item whose batches were all retried lists nothing

    # Leases (see lease.py) ---------------------------------------------------------------------

    def lease(self, user_id: str, data_type: str) -> dict | None:
        """Who holds the lease on (user, data type) and until when (`expiresAt`, epoch seconds), or None."""
        return self.leases.get(user_id, data_type)

    def break_lease(self, user_id: str, data_type: str) -> bool:
        """Remove the lease whoever holds it; a holder still alive is fenced off. Returns whether one existed."""
        return self.leases.break_lease(user_id, data_type)
