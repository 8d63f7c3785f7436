"""The fetch of a full sync through one Shopify bulk operation, checkpointed like paged fetches (issue #13).

The checkpoint's `bulk` entry holds the operation's query and id (saved before anything else happens after
it is created), and, while the result is read, the byte offset after the last staged record and the pages
staged. A run that stops anywhere resumes: it polls its own operation (or adopts the shop's current one when
it runs exactly our query and the id was lost to a crash), then reads the result from the saved offset
with `Range`. Records are staged as pages of `PAGE_RECORDS`, the same `{"<type>": [...]}` pages as paged
fetches stage, so loading is unchanged.

An end that is not a whole result never counts as one: an operation that failed, expired or completed
without its file is given up (its staged pages dropped) and the sync falls back to paged slices, said in
the status; ACCESS_DENIED is permanent. After the last record, the records staged must number the
operation's `rootObjectCount`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shopify_pipeline.dynamo.pages import PageStore, page_number
from shopify_pipeline.exact_json import dumps_json
from shopify_pipeline.shopify.bulk import (
    BulkOperation,
    BulkOperationFailedError,
    BulkOperations,
    BulkOperationUnknownError,
    BulkQueryRefusedError,
    BulkResultExpiredError,
    ResultDownload,
)
from shopify_pipeline.shopify.bulk_records import UngroupedResultError, stitch
from shopify_pipeline.shopify.client import UnexpectedAnswerError
from shopify_pipeline.shopify.errors import MissingScopeError, ShopifyPermanentError
from shopify_pipeline.shopify.sources import NESTED, GraphQLSource, bulk_listing_query
from shopify_pipeline.sync.records import note_bad_records, record_problems

log = logging.getLogger(__name__)

PAGE_RECORDS = 250
# Staged bulk pages have a slice number of their own (record slices count from 0, deletions are 999), so a
# fallback's paged slices never meet them, and dropping them again is harmless.
BULK_SLICE = 998


def plan_bulk(filters: dict, data_type: str, planned: int) -> dict:
    """The checkpoint entry of a bulk fetch not started yet; `planned` is Shopify's count when it was planned."""
    return {"query": bulk_listing_query(data_type, filters), "operation": None, "offset": 0, "pages": 0,
            "records": 0, "lines": 0, "planned": planned, "objects": None, "done": False, "fallback": None}


class BulkGiveUp(Exception):  # noqa: N818 - not an error to report: the caller falls back to paged slices
    """This operation will not give a whole result; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fetch_bulk(source: GraphQLSource, pages: PageStore, key: str, data_type: str, state: dict,
               save: Callable[[], None], status: Callable[[str], None], lease, poll: tuple[float, float, float]
               ) -> None:
    """Run (or resume) the bulk fetch of `state["bulk"]` to its end, staging pages and calling `save` (the
    checkpoint) after each. Raises BulkGiveUp when the operation cannot give a whole result."""
    bulk = state["bulk"]
    operations = BulkOperations(source.graphql)
    if bulk["operation"] is None:
        lease.check()  # no operation is started by a sync that already lost its lease
        try:
            operation = _start_or_adopt(operations, bulk["query"])
        except BulkQueryRefusedError as error:
            raise BulkGiveUp(str(error)) from None
        bulk["operation"] = operation.id
        save()  # the id first: a run that stops from here on polls this operation, it never starts another
        status(f"Bulk export of {data_type} started ({operation.id}).")
    first, most, longest = poll

    def progress(operation: BulkOperation) -> None:
        status(f"Bulk export of {data_type}: {operation.status}, {operation.object_count} objects so far.")

    try:
        operation = operations.wait(bulk["operation"], progress, first, most, longest)
        url = operations.result_url(operation)
    except (BulkOperationFailedError, BulkResultExpiredError) as error:
        raise BulkGiveUp(str(error)) from None
    except (MissingScopeError, BulkOperationUnknownError):
        # ACCESS_DENIED, or an operation Shopify forgot: the next run (once the scope is granted) starts anew.
        # (Any other error of a poll leaves the id: the next run polls the same operation.)
        bulk["operation"] = None
        save()
        raise
    bulk["objects"] = operation.root_object_count
    if url is not None:
        _read(url, source, pages, key, data_type, state, save, status, lease.fence)
    # Never "complete" on less than the operation counted, nor on nothing when the plan counted records.
    if bulk["records"] != operation.root_object_count or (url is not None and bulk["lines"] != operation.object_count):
        raise BulkGiveUp(f"the bulk result held {bulk['records']} {data_type} in {bulk['lines']} lines, but the "
                         f"operation counted {operation.root_object_count} in {operation.object_count}")
    if operation.root_object_count == 0 and bulk["planned"] > 0:
        raise BulkGiveUp(f"the bulk export found no {data_type}, but Shopify counted {bulk['planned']} when the "
                         "sync was planned")
    bulk["done"] = True
    save()


def _start_or_adopt(operations: BulkOperations, query: str) -> BulkOperation:
    current = operations.current()
    if current is not None and not current.ended and current.query == query:
        log.warning("adopting the shop's running bulk operation %s: it runs exactly our query (an earlier run "
                    "stopped before saving its id)", current.id)
        return current
    # A shop running as many operations as it allows raises BulkInProgressError: transient, so the run is
    # retried later (by Dagster's retry policy, or the next run) rather than failing the sync for good.
    return operations.start(query, group_objects=True)


def _read(url: str, source: GraphQLSource, pages: PageStore, key: str, data_type: str, state: dict,
          save: Callable[[], None], status: Callable[[str], None], fence) -> None:
    bulk = state["bulk"]
    download = ResultDownload(source.client.settings)
    batch: list[dict] = []
    try:
        records = stitch(download.lines(url, bulk["offset"]), NESTED[data_type][0], bulk["offset"])
        resume = bulk["offset"]
        for record in records:
            batch.append(record.document)
            resume = record.resume_offset
            if len(batch) == PAGE_RECORDS:
                _stage(batch, resume, pages, key, data_type, state, save, fence)
                status(f"Reading the bulk result of {data_type}: {bulk['records']} records staged.")
                batch = []
        if batch:
            _stage(batch, resume, pages, key, data_type, state, save, fence)
    except (UngroupedResultError, BulkResultExpiredError, ShopifyPermanentError) as error:
        raise BulkGiveUp(str(error)) from None  # storage refused the file (expired, 4xx): pages instead
    except UnexpectedAnswerError as error:
        raise BulkGiveUp(f"the bulk result is broken: {error}") from None
    finally:
        download.close()


def _stage(batch: list[dict], resume: int, pages: PageStore, key: str, data_type: str, state: dict,
           save: Callable[[], None], fence) -> None:
    bulk = state["bulk"]
    number = page_number(BULK_SLICE, bulk["pages"] + 1)
    problems = record_problems(data_type, batch, page=number, shape="graphql")
    pages.put(key, number, dumps_json({data_type: batch}).encode(), len(batch), f"bulk {bulk['operation']}", fence)
    if problems:
        note_bad_records(state, problems)
    lines = sum(1 + len(record[NESTED[data_type][0]]["nodes"]) for record in batch)
    bulk.update(offset=resume, pages=bulk["pages"] + 1, records=bulk["records"] + len(batch),
                lines=bulk["lines"] + lines)
    state["pages"] += 1
    state["records"] += len(batch)
    save()
