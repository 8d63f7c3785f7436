"""Shopify bulk query operations: start one, poll it to its end, say what its end means, download its result.

A bulk query exports a whole listing as JSONL, unbounded by the rate limit. It is also where connectors
lose data, so every end is read strictly (`BulkOperations.result_url`):

- COMPLETED with a URL: the result. COMPLETED without one is an empty result only when `objectCount` is 0;
  with objects it is an error, never "zero records".
- FAILED: ACCESS_DENIED is permanent (a scope is missing); INTERNAL_SERVER_ERROR and TIMEOUT are transient
  and carry the `partialDataUrl` if Shopify gave one.
- EXPIRED (the URL lives 7 days), CANCELED: transient; a new operation is needed.

The result is downloaded from storage, not from the shop: the access token is never sent there, redirects
are refused, and a connection that drops mid-file is resumed with `Range` from the last whole line.

Full syncs use it through `sync/bulk_fetch.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import requests

from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.client import UnexpectedAnswerError
from shopify_pipeline.shopify.errors import (
    BadRequestError,
    MissingScopeError,
    RedirectRefusedError,
    ShopifyPermanentError,
    ShopifyTransientError,
)
from shopify_pipeline.shopify.graphql import GraphQLClient

log = logging.getLogger(__name__)

OPERATION_FIELDS = ("id status errorCode createdAt completedAt objectCount rootObjectCount fileSize url "
                    "partialDataUrl query")
RUNNING = ("CREATED", "RUNNING", "CANCELING")
ENDED = ("COMPLETED", "FAILED", "CANCELED", "EXPIRED")
MAX_LINE_BYTES = 64 * 1024 * 1024  # one JSONL object; a longer line is a broken file, not read into memory

START = ("mutation Start($query: String!, $group: Boolean) { bulkOperationRunQuery(query: $query, "
         f"groupObjects: $group) {{ bulkOperation {{ {OPERATION_FIELDS} }} userErrors {{ field message code }} }} }}")
POLL = f"query Poll($id: ID!) {{ bulkOperation(id: $id) {{ {OPERATION_FIELDS} }} }}"
# `bulkOperations` (API 2026-01+, newest first) replaced `currentBulkOperation`: it sees every operation of ours.
RECENT = (f"query Recent($first: Int!, $after: String, $query: String) {{ bulkOperations(first: $first, "
          f"after: $after, query: $query) {{ nodes {{ {OPERATION_FIELDS} }} pageInfo {{ hasNextPage endCursor }} }} }}")
NOTICE_SECONDS = 1.0  # how often a waiting sync looks for a bulk_operations/finish notice between polls
MAX_RUN_DAYS = 10  # Shopify fails an operation that has not finished in 10 days
CANCEL = (f"mutation Cancel($id: ID!) {{ bulkOperationCancel(id: $id) {{ bulkOperation {{ {OPERATION_FIELDS} }} "
          "userErrors { field message } } }")


class BulkInProgressError(ShopifyTransientError):
    """The shop already runs as many bulk queries as it allows (one before API 2026-01, five since)."""

    reason = "bulk_in_progress"


class BulkQueryRefusedError(BadRequestError):
    """Shopify refused the bulk query itself (too many connections, too deep, …): ours to fix."""

    reason = "bulk_query_refused"


class BulkOperationFailedError(ShopifyTransientError):
    """The operation ended without a whole result (FAILED, CANCELED, EXPIRED, or COMPLETED without its file).
    `operation` says how; a new operation (or the `partialDataUrl`, then the rest) is the way on."""

    reason = "bulk_failed"

    def __init__(self, message: str, operation: BulkOperation) -> None:
        super().__init__(message)
        self.operation = operation


class BulkOperationStuckError(BulkOperationFailedError):
    """The operation has run longer than it may (Shopify's limit is 10 days) and is still not done."""

    reason = "bulk_stuck"


class BulkOperationUnknownError(ShopifyTransientError):
    """Shopify does not know the operation (any more): a new one is needed."""

    reason = "bulk_operation_unknown"


class BulkResultExpiredError(ShopifyTransientError):
    """The result URL expired (Shopify keeps results 7 days): start a new operation."""

    reason = "bulk_result_expired"


@dataclass(frozen=True)
class BulkOperation:
    """A bulk operation as `bulkOperation(id:)` shows it."""

    id: str
    status: str
    error_code: str | None
    object_count: int
    root_object_count: int
    url: str | None
    partial_data_url: str | None
    created_at: str | None
    query: str | None = None

    @classmethod
    def of(cls, value: object) -> BulkOperation:
        """Read Shopify's object; anything that is not a bulk operation is an UnexpectedAnswerError."""
        if not isinstance(value, dict) or not isinstance(value.get("id"), str) or value.get("status") not in (
                *RUNNING, *ENDED):
            raise UnexpectedAnswerError(f"Shopify's answer is not a bulk operation: {str(value)[:200]}")
        return cls(value["id"], value["status"], value.get("errorCode"), _count(value.get("objectCount")),
                   _count(value.get("rootObjectCount")), value.get("url"), value.get("partialDataUrl"),
                   value.get("createdAt"), value.get("query"))

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def created_timestamp(self) -> float | None:
        """`createdAt` as a POSIX timestamp, None when absent or not a time."""
        try:
            return datetime.fromisoformat((self.created_at or "").replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None


def _count(value: object) -> int:
    """An UnsignedInt64 count (a string of digits, or a number); absent is 0."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise UnexpectedAnswerError(f"Shopify's bulk operation count is not a number: {str(value)[:40]!r}")


class BulkOperations:
    """Bulk query operations of one shop, through its GraphQL client (same session, pacing and errors)."""

    def __init__(self, graphql: GraphQLClient, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.graphql = graphql
        self._sleep = sleep
        self._clock = clock  # wall-clock seconds: an operation's age counts from its `createdAt`

    def start(self, query: str, group_objects: bool = False) -> BulkOperation:
        """Start a bulk query. Raises BulkInProgressError when the shop runs its maximum already, and
        BulkQueryRefusedError for a query Shopify will not run."""
        answer = self.graphql.execute(START, {"query": query, "group": group_objects}).data
        payload = answer.get("bulkOperationRunQuery")
        if not isinstance(payload, dict):
            raise UnexpectedAnswerError("Shopify's answer to bulkOperationRunQuery has no payload")
        errors = payload.get("userErrors") or []
        if errors:
            text = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:500]
            if any(isinstance(e, dict) and e.get("code") == "OPERATION_IN_PROGRESS" for e in errors):
                raise BulkInProgressError(f"Shopify runs as many bulk queries for this shop as it allows ({text})")
            raise BulkQueryRefusedError(f"Shopify refused the bulk query ({text})")
        return BulkOperation.of(payload.get("bulkOperation"))

    def get(self, operation_id: str) -> BulkOperation | None:
        """The operation now, or None when Shopify does not know it."""
        found = self.graphql.execute(POLL, {"id": operation_id}).data.get("bulkOperation")
        return None if found is None else BulkOperation.of(found)

    def recent(self, days: float = MAX_RUN_DAYS, max_pages: int = 10) -> list[BulkOperation]:
        """Our bulk query operations created in the last `days`, newest first, whatever their status (at most
        `max_pages` pages of 50: a shop that lists more has no room for ours to run either). With the default
        every operation still running is among them (none runs longer), so this finds the ones whose id a
        stopped run never saved."""
        since = datetime.fromtimestamp(self._clock() - days * 86_400, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        search = f"operation_type:query created_at:>='{since}'"
        found: list[BulkOperation] = []
        pages = self.graphql.connection_pages(RECENT, "bulkOperations", {"query": search}, first=50)
        for _, (nodes, _) in zip(range(max_pages), pages, strict=False):
            found.extend(BulkOperation.of(node) for node in nodes)
        return found

    def cancel(self, operation_id: str) -> BulkOperation | None:
        """Ask Shopify to cancel; returns the operation as it is then (an ended one stays as it ended)."""
        payload = self.graphql.execute(CANCEL, {"id": operation_id}).data.get("bulkOperationCancel") or {}
        found = payload.get("bulkOperation")
        return None if found is None else BulkOperation.of(found)

    def wait(self, operation_id: str, progress: Callable[[BulkOperation], None] | None = None,
             first_poll: float = 1.0, max_poll: float = 30.0, max_seconds: float = 10 * 24 * 3600,
             first_seen: float | None = None, ended: Callable[[], bool] | None = None) -> BulkOperation:
        """Poll until the operation ends: every `first_poll` seconds at first, doubling up to `max_poll`.
        Raises BulkOperationStuckError if it is still running `max_seconds` after it began (Shopify's limit is
        10 days): the earlier of its `createdAt` and `first_seen` (when we first knew of it, on our clock, so a
        run that resumes the wait does not start the count again, and a `createdAt` in the future cannot hold
        it off), BulkOperationUnknownError if Shopify no longer knows it. `ended` (a bulk_operations/finish
        webhook's notice) is asked every NOTICE_SECONDS between polls: once it says yes, Shopify is polled at once."""
        first_seen = self._clock() if first_seen is None else first_seen
        pause = first_poll
        noticed = ended is None
        while True:
            operation = self.get(operation_id)
            if operation is None:
                raise BulkOperationUnknownError(f"Shopify no longer knows bulk operation {operation_id}")
            if progress is not None:
                progress(operation)
            if operation.ended:
                return operation
            now = self._clock()
            created = operation.created_timestamp()
            began = min(first_seen, created) if created is not None and created <= now + 60 else first_seen
            age = now - began
            if age > max_seconds:
                raise BulkOperationStuckError(
                    f"bulk operation {operation_id} is still {operation.status} {age:.0f} s after it was created "
                    f"(the limit is {max_seconds:.0f} s; {operation.object_count} objects so far)", operation)
            if noticed:
                self._sleep(pause)
            else:
                noticed = self._sleep_unless(pause, ended)
            pause = min(max_poll, pause * 2)

    def _sleep_unless(self, seconds: float, ended: Callable[[], bool]) -> bool:
        """Sleep `seconds`, or less if `ended()` turns true (then True: the notice is taken once; should Shopify
        still show the operation running, the polls go on as usual)."""
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            try:
                if ended():
                    return True
            except Exception as error:  # noqa: BLE001 - the notice is a shortcut: without it the polls go on
                log.warning("bulk operation notice unreadable (%s); polling Shopify as usual", type(error).__name__)
                self._sleep(left)
                return False
            self._sleep(min(NOTICE_SECONDS, left))
        return False

    @staticmethod
    def result_url(operation: BulkOperation) -> str | None:
        """The URL of an ended operation's whole result, or None for an empty one; raises for every other end."""
        status, count = operation.status, operation.object_count
        if status == "COMPLETED":
            if operation.url:
                return operation.url
            if count == 0:
                return None  # the only empty result: nothing matched
            raise BulkOperationFailedError(
                f"bulk operation {operation.id} COMPLETED with {count} objects but no result URL; it is not taken "
                "as empty. A new operation is needed.", operation)
        if status == "FAILED" and operation.error_code == "ACCESS_DENIED":
            raise MissingScopeError(
                f"Shopify refused bulk operation {operation.id} (ACCESS_DENIED): the app lacks a scope the query "
                "needs. Ask the merchant to approve it and reconnect.", 403)
        partial = " (a partial result is at its partialDataUrl)" if operation.partial_data_url else ""
        if status == "EXPIRED":
            raise BulkResultExpiredError(f"the result of bulk operation {operation.id} expired: a new one is needed")
        raise BulkOperationFailedError(
            f"bulk operation {operation.id} ended {status}"
            f"{f' ({operation.error_code})' if operation.error_code else ''} after {count} objects{partial}",
            operation)


class ResultDownload:
    """Reads a bulk result URL line by line from a byte offset. The URL is storage's, not the shop's: no access
    token is sent, no redirect is followed; a connection that drops is resumed with `Range` from the last whole
    line, `retries` times in a row without progress."""

    def __init__(self, settings: ShopifySettings | None = None, chunk_bytes: int = 256 * 1024) -> None:
        self.settings = settings or ShopifySettings()
        self.chunk_bytes = chunk_bytes
        self._session = requests.Session()
        self._session.headers.update({"User-Agent": "shopify_pipeline/0.1"})

    def close(self) -> None:
        self._session.close()

    def lines(self, url: str, offset: int = 0) -> Iterator[tuple[bytes, int]]:
        """Every line from byte `offset` on, as (line without its newline, the offset just after it); the
        offset is what to resume from."""
        failures = 0
        while True:
            try:
                for line, after in self._read(url, offset):
                    offset = after
                    failures = 0
                    yield line, after
                return
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
                failures += 1
                if failures > self.settings.retries:
                    raise ShopifyTransientError(
                        f"the bulk result download kept failing at byte {offset} ({type(error).__name__})") from None
                log.warning("bulk result download dropped at byte %d (%s); resuming with Range", offset,
                            type(error).__name__)
                time.sleep(min(self.settings.backoff_cap_seconds, self.settings.backoff_seconds * 2 ** (failures - 1)))

    def _read(self, url: str, offset: int) -> Iterator[tuple[bytes, int]]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        timeout = (min(10.0, self.settings.timeout_seconds), self.settings.timeout_seconds)  # per read: files are big
        with self._session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=False) as answer:
            if 300 <= answer.status_code < 400:
                raise RedirectRefusedError(f"the bulk result URL answered {answer.status_code}, a redirect; refused",
                                           answer.status_code)
            if answer.status_code == 416:
                return  # the offset is the end of the file: nothing more
            if answer.status_code == 403 and b"expired" in answer.raw.read(2000).lower():  # never the whole body
                raise BulkResultExpiredError("the bulk result URL expired: a new operation is needed", 403)
            if answer.status_code >= 500:
                raise requests.ConnectionError(f"storage answered {answer.status_code}")
            if answer.status_code not in (200, 206):
                raise ShopifyPermanentError(f"the bulk result URL answered {answer.status_code}", answer.status_code)
            skip = 0
            if offset and answer.status_code == 200:
                skip = offset  # storage ignored the Range: read past what we have
            elif offset and not answer.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                raise UnexpectedAnswerError(
                    f"storage answered Range {offset}- with Content-Range {answer.headers.get('Content-Range')}")
            position = offset if answer.status_code == 206 else 0
            pending = bytearray()  # the line being read: appended to in place, split only when a newline came
            for chunk in answer.iter_content(self.chunk_bytes):
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip, position = chunk[cut:], skip - cut, position + cut
                pending += chunk
                if b"\n" in chunk:
                    *whole, rest = bytes(pending).split(b"\n")
                    pending = bytearray(rest)
                    for line in whole:
                        position += len(line) + 1
                        if line:
                            yield line, position
                if len(pending) > MAX_LINE_BYTES:
                    raise UnexpectedAnswerError(f"a bulk result line is longer than {MAX_LINE_BYTES:,} bytes")
            if pending:  # the last line without a newline: whole only if the file ended here
                declared = answer.headers.get("Content-Length")
                received = position + len(pending) - (offset if answer.status_code == 206 else 0)
                if declared is not None and received < int(declared):
                    raise requests.exceptions.ChunkedEncodingError("the body ended before its Content-Length")
                position += len(pending)
                yield bytes(pending), position
