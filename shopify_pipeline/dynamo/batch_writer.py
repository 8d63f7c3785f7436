"""Write records in BatchWriteItem calls of 25, in parallel, and report — never raise — what failed.

Throttling and 5xx are first retried by botocore's standard retry mode; UnprocessedItems are resubmitted
here with exponential backoff and full jitter. A batch that still fails comes back as a `FailedBatch`
(its records and its range, e.g. "26-50") for the caller to save and `retry_failed_batches` to redo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice

from botocore.exceptions import BotoCoreError, ClientError

from shopify_pipeline.dynamo.client import (
    DynamoThrottledError,
    error_code,
    missing_table_error,
    translate_errors,
    write_batch,
)
from shopify_pipeline.dynamo.codec import EncodedRecord, encode_record
from shopify_pipeline.settings import Settings


@dataclass
class FailedBatch:
    """Records that could not be written, with their 1-based positions in the load stream."""

    first: int
    last: int
    records: list[dict]
    error: str
    attempts: int

    @property
    def range(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass
class WriteReport:
    """What one `write_records` call did."""

    written: int = 0
    duplicates_collapsed: int = 0
    resubmissions: int = 0
    failed_batches: list[FailedBatch] = field(default_factory=list)

    @property
    def failed_records(self) -> int:
        return sum(len(batch.records) for batch in self.failed_batches)


class BatchWriter:
    """Writes Shopify documents of one data type for one user into a record table."""

    def __init__(
        self,
        client,
        settings: Settings,
        workers: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._settings = settings
        self._workers = workers or settings.write_workers
        self._sleep = sleep

    def write_records(
        self, user_id: str, data_type: str, records: Iterable[dict], first_position: int = 1,
        before_batch: Callable[[], None] | None = None,
    ) -> WriteReport:
        """Upsert `records` (keyed by id, so replays are harmless). Returns counts and failed batches.

        `before_batch` runs in the writing thread right before each BatchWriteItem (the sync's lease
        check: an exception there stops the batch unwritten and is raised here).
        Raises only for errors no batch can survive (a missing table, a lost lease); the rest is reported.
        """
        report = WriteReport()
        size = self._settings.batch_size
        in_flight: set[Future] = set()
        with ThreadPoolExecutor(self._workers, thread_name_prefix="dynamo-write") as pool:
            for first, batch in _numbered_batches(records, size, first_position):
                if len(in_flight) >= self._workers * 2:  # bounded: memory stays flat on big loads
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    self._collect(done, report)
                in_flight.add(pool.submit(self._write_batch, user_id, data_type, first, batch, before_batch))
            self._collect(in_flight, report)
        return report

    def delete_records(self, user_id: str, data_type: str, record_ids: Iterable[int]) -> int:
        """Delete records by id (deleted in Shopify); absent ones are no-ops. Returns how many were asked.

        Raises DynamoThrottledError when DynamoDB keeps them unprocessed: the staged deletion page then
        stays unloaded and the next run deletes again.
        """
        table = self._settings.tables.records(data_type)
        ids = sorted(set(record_ids))
        for group in _groups(ids, self._settings.batch_size):
            requests = [{"DeleteRequest": {"Key": {"userId": {"S": user_id}, "id": {"N": str(i)}}}} for i in group]
            with translate_errors(table, self._client.meta.endpoint_url):
                _, left = write_batch(self._client, {table: requests}, self._settings, self._sleep)
            if left:
                raise DynamoThrottledError(f"DynamoDB kept deletes of {data_type} for {user_id} unprocessed")
        return len(ids)

    def _collect(self, futures: Iterable[Future], report: WriteReport) -> None:
        for future in futures:
            written, collapsed, resubmissions, failed = future.result()
            report.written += written
            report.duplicates_collapsed += collapsed
            report.resubmissions += resubmissions
            if failed:
                report.failed_batches.append(failed)
        report.failed_batches.sort(key=lambda batch: batch.first)

    def _write_batch(
        self, user_id: str, data_type: str, first: int, records: list[dict],
        before_batch: Callable[[], None] | None = None,
    ) -> tuple[int, int, int, FailedBatch | None]:
        table = self._settings.tables.records(data_type)
        encoded: dict[int, EncodedRecord] = {}
        for doc in records:  # the last version of a record wins, as a replay would
            record = encode_record(table, user_id, data_type, doc, self._settings.max_item_bytes,
                                   native=self._settings.document_format == "native")
            encoded[record.record_id] = record
        collapsed = len(records) - len(encoded)
        last = first + len(records) - 1
        chunk_requests = [(self._settings.tables.documents, c) for r in encoded.values() for c in r.chunks]
        item_requests = [(table, r.item) for r in encoded.values()]
        resubmissions = 0
        attempts = 0
        if before_batch:
            before_batch()
        try:
            # Chunks first: a record item never points at chunks that are not there yet.
            for requests in (chunk_requests, item_requests):
                for group in _groups(requests, 25):
                    used, pending = self._submit(group)
                    resubmissions += used
                    attempts = max(attempts, used + 1)
                    if pending:
                        error = f"{pending} write requests still unprocessed after {used} resubmissions"
                        return 0, collapsed, resubmissions, FailedBatch(first, last, records, error, attempts)
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                raise missing_table_error(table, self._client.meta.endpoint_url) from error
            message = f"{error_code(error)}: {error}"
            return 0, collapsed, resubmissions, FailedBatch(first, last, records, message, attempts + 1)
        except BotoCoreError as error:
            message = f"{type(error).__name__}: {error}"
            return 0, collapsed, resubmissions, FailedBatch(first, last, records, message, attempts + 1)
        return len(encoded), collapsed, resubmissions, None

    def _submit(self, requests: list[tuple[str, dict]]) -> tuple[int, int]:
        """One BatchWriteItem, resubmitting UnprocessedItems. Returns (resubmissions, still pending)."""
        by_table: dict[str, list] = {}
        for table, item in requests:
            by_table.setdefault(table, []).append({"PutRequest": {"Item": item}})
        return write_batch(self._client, by_table, self._settings, self._sleep)


def _numbered_batches(records: Iterable[dict], size: int, first: int) -> Iterator[tuple[int, list[dict]]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield first, batch
        first += len(batch)


def _groups(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
