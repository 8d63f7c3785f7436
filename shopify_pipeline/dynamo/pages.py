"""Staged pages (`sync_pages`): every fetched page, compressed, so loading can be redone without Shopify.

Key: `syncKey` = "{user}#{syncType}#{dataType}#{generation}", `page` = slice × 1 000 000 + page number in
the slice. The generation is new for every planned sync and named by its checkpoint, so a sync that lost
its lease and wakes up late can only write under its own old generation, which no later sync reads. A
sync that takes over an unfinished one shares its generation, so every staged page, loaded marker and
drop is also a fenced write (a transaction with a check of the lease's token, see lease.py).
A page body up to the item limit is stored inline; a larger one goes to the blob store in chunks, under
a key new for every write (a late writer's chunks can never mix with the current page's).
That a page was loaded is a tiny marker item under "{syncKey}#loaded" (an update of the page item itself
would cost as many write units as the page is large).
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from shopify_pipeline.dynamo.client import translate_errors
from shopify_pipeline.dynamo.lease import Fence, fenced_write
from shopify_pipeline.dynamo.state import BlobStore
from shopify_pipeline.settings import STAGED_PAGE_TTL_SECONDS, Settings

PAGES_PER_SLICE = 1_000_000
_FENCED_INLINE = 4_000  # fenced pages up to this size stay inline: doubling 4 write units costs less than a blob


def sync_key(user_id: str, sync_type: str, data_type: str, generation: str | None = None) -> str:
    """The staging key of one sync; checkpoints written before generations existed have none."""
    base = f"{user_id}#{sync_type}#{data_type}"
    return f"{base}#{generation}" if generation else base


def page_number(slice_index: int, page_in_slice: int) -> int:
    return slice_index * PAGES_PER_SLICE + page_in_slice


@dataclass
class StagedPage:
    """What is known of a staged page without reading its body."""

    number: int
    records: int
    loaded: bool
    chunks: int
    blob_key: str | None = None


class PageStore:
    """Stage, list, read and drop the pages of one sync."""

    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._table = settings.tables.pages
        self._max_inline = settings.max_item_bytes - 1_000
        self._blobs = BlobStore(client, settings)

    def _call(self, operation: str, **kwargs) -> dict:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            return getattr(self._client, operation)(TableName=self._table, **kwargs)

    def put(self, key: str, number: int, body: bytes, records: int, url: str, fence: Fence | None = None) -> None:
        """Stage the exact bytes Shopify sent for one page (overwrites a page fetched again); with a fence,
        only while its lease holds (LeaseLostError otherwise, nothing staged).

        Fenced, the body goes to the blob store under a new key and only the small page item that points at
        it is the transaction: a transaction costs twice the write units, and a 250-order page is ~190 KB
        compressed (measured by `benchmarks/fencing.py`)."""
        packed = zlib.compress(body, 6)
        ttl = int(time.time()) + STAGED_PAGE_TTL_SECONDS
        item = {
            "syncKey": {"S": key}, "page": {"N": str(number)}, "records": {"N": str(records)},
            "url": {"S": url[:2000]}, "ttl": {"N": str(ttl)},
        }
        if len(packed) <= self._max_inline and (fence is None or len(packed) <= _FENCED_INLINE):
            item["body"] = {"B": packed}
        else:
            blob_key = f"page#{key}#{number}#{uuid.uuid4().hex[:8]}"
            chunks = self._blobs.put(blob_key, packed, STAGED_PAGE_TTL_SECONDS)
            item["chunks"] = {"N": str(chunks)}
            item["blobKey"] = {"S": blob_key}
        fenced_write(self._client, fence, "put_item", TableName=self._table, Item=item)

    def _query(self, key: str, low: int = 0, high: int = 2**62) -> Iterator[dict]:
        kwargs = {
            "KeyConditionExpression": "syncKey = :k AND page BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":k": {"S": key}, ":lo": {"N": str(low)}, ":hi": {"N": str(high)}},
            "ProjectionExpression": "page, records, chunks, blobKey", "ConsistentRead": True,
        }
        while True:
            result = self._call("query", **kwargs)
            yield from result["Items"]
            if "LastEvaluatedKey" not in result:
                return
            kwargs["ExclusiveStartKey"] = result["LastEvaluatedKey"]

    def list(self, key: str) -> list[StagedPage]:
        """The staged pages of a sync in page order, without their bodies."""
        loaded = {int(item["page"]["N"]) for item in self._query(f"{key}#loaded")}
        return [
            StagedPage(int(item["page"]["N"]), int(item["records"]["N"]), int(item["page"]["N"]) in loaded,
                       int(item.get("chunks", {}).get("N", "0")), item.get("blobKey", {}).get("S"))
            for item in self._query(key)
        ]

    def body(self, key: str, page: StagedPage) -> bytes:
        """The exact bytes Shopify sent for `page`."""
        if page.chunks:
            return zlib.decompress(self._blobs.get(self._blob_key(key, page), page.chunks))
        item = self._call("get_item", Key=self._key(key, page.number), ConsistentRead=True)["Item"]
        return zlib.decompress(bytes(item["body"]["B"]))

    def mark_loaded(self, key: str, number: int, fence: Fence | None = None) -> None:
        ttl = int(time.time()) + STAGED_PAGE_TTL_SECONDS
        fenced_write(self._client, fence, "put_item", TableName=self._table,
                     Item={**self._key(f"{key}#loaded", number), "ttl": {"N": str(ttl)}})

    def drop(self, key: str, first: int = 0, last: int = 2**62, fence: Fence | None = None) -> int:
        """Delete the staged pages numbered first..last of a sync (all by default), each only while `fence`
        holds its lease when given. Returns how many."""
        pages = [p for p in self.list(key) if first <= p.number <= last]
        for page in pages:
            fenced_write(self._client, fence, "delete_item", TableName=self._table, Key=self._key(key, page.number))
            fenced_write(self._client, fence, "delete_item", TableName=self._table,
                         Key=self._key(f"{key}#loaded", page.number))
            if page.chunks:  # after the item that points at them, so a fenced-off drop leaves the page whole
                self._blobs.delete(self._blob_key(key, page), page.chunks)
        return len(pages)

    @staticmethod
    def _blob_key(key: str, page: StagedPage) -> str:
        return page.blob_key or f"page#{key}#{page.number}"  # pages staged before unique blob keys

    @staticmethod
    def _key(key: str, number: int) -> dict:
        return {"syncKey": {"S": key}, "page": {"N": str(number)}}
