"""The fetch of a full sync through Shopify bulk operations, checkpointed like paged fetches (issue #13).

The checkpoint's `bulk` entry holds the current operation's query and id (saved before anything else happens
after it is created) and, while its result is read, the byte offset after the last staged record. A run that
stops anywhere resumes: it polls its own operation, or, when the id was lost to a crash, adopts the one it
had started (found among the shop's recent operations by its exact query); operations of ours for the same
data type that no checkpoint holds are cancelled, so they do not take the shop's bulk slots. Records are
staged as pages of `PAGE_RECORDS`, the same `{"<type>": [...]}` pages as paged fetches stage, so loading is
unchanged.

An end that is not a whole result never counts as one. When an operation fails (with its `partialDataUrl`
read first), expires, completes without its file or is forgotten, the next operation asks only for what is
missing: the records after the last one staged (results come in id order, which is checked as they are read);
when that order does not hold or nothing was staged, it asks for everything again and the staged bulk pages
are dropped. After `MAX_OPERATIONS` operations, an operation stuck past the time limit (it is cancelled), a
result that is not grouped or miscounted, the fetch gives up and the sync falls back to paged slices, said in
the status. ACCESS_DENIED is permanent. Every operation's end is kept in `bulk["history"]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from shopify_pipeline.dynamo.notices import BulkFinishNotices
from shopify_pipeline.dynamo.pages import PAGES_PER_SLICE, PageStore, page_number
from shopify_pipeline.exact_json import dumps_json
from shopify_pipeline.shopify.bulk import (
    BulkInProgressError,
    BulkOperation,
    BulkOperationFailedError,
    BulkOperations,
    BulkOperationStuckError,
    BulkOperationUnknownError,
    BulkQueryRefusedError,
    BulkResultExpiredError,
    ResultDownload,
)
from shopify_pipeline.shopify.bulk_records import UngroupedResultError, stitch
from shopify_pipeline.shopify.client import UnexpectedAnswerError
from shopify_pipeline.shopify.errors import MissingScopeError, ShopifyPermanentError
from shopify_pipeline.shopify.sources import (
    NESTED,
    GraphQLSource,
    bulk_listing_query,
    bulk_listing_type,
    search_query,
)
from shopify_pipeline.sync.records import note_bad_records, record_problems

log = logging.getLogger(__name__)

PAGE_RECORDS = 250
# Staged bulk pages have a slice number of their own (record slices count from 0, deletions are 999), so a
# fallback's paged slices never meet them, and dropping them again is harmless.
BULK_SLICE = 998
# Operations one bulk fetch may start: the first, and those that continue or repeat one that ended without a
# whole result. Then it falls back to pages.
MAX_OPERATIONS = 4
# Shopify's `createdAt` has whole seconds and its clock is not ours: an operation created this long before a
# run said it was starting one may still be that run's.
CLOCK_SLACK_SECONDS = 5


def plan_bulk(filters: dict, data_type: str, planned: int) -> dict:
    """The checkpoint entry of a bulk fetch not started yet; `planned` is Shopify's count when it was planned."""
    return {"query": bulk_listing_query(data_type, filters), "filters": filters, "operation": None, "offset": 0,
            "pages": 0, "records": 0, "op_records": 0, "op_lines": 0, "last_id": None, "ascending": True,
            "bad": 0, "history": [], "planned": planned, "done": False, "fallback": None}


class BulkGiveUp(Exception):  # noqa: N818 - not an error to report: the caller falls back to paged slices
    """Bulk operations will not give a whole result; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BulkFetch:
    """One data type's bulk fetch: `run()` takes `state["bulk"]` to its end, staging pages and calling `save`
    (the checkpoint) after each. `poll` is (first, longest interval, longest an operation may run) in seconds;
    a shop that runs as many bulk queries as it allows is waited on for up to `slot_wait` seconds."""

    def __init__(self, source: GraphQLSource, pages: PageStore, key: str, data_type: str, state: dict,
                 save: Callable[[], None], status: Callable[[str], None], lease,
                 poll: tuple[float, float, float], slot_wait: float = 3600.0,
                 held_elsewhere: Callable[[], set[str]] = set, notices: BulkFinishNotices | None = None) -> None:
        """`held_elsewhere` gives the operation ids this user's other checkpoints of the data type hold (another
        sync type's paused export): never cancelled as leftovers. `notices` are the user's bulk_operations/finish
        webhooks: a waiting sync reads the result as soon as one says its operation ended."""
        self.held_elsewhere = held_elsewhere
        self.notices = notices
        self.source, self.pages, self.key, self.data_type = source, pages, key, data_type
        self.state, self.bulk = state, state["bulk"]
        self.save, self.status, self.lease = save, status, lease
        self.poll, self.slot_wait = poll, slot_wait
        self.operations = BulkOperations(source.graphql)
        for name, default in (("op_records", self.bulk.get("records", 0)), ("op_lines", self.bulk.get("lines", 0)),
                              ("last_id", None), ("ascending", False), ("history", []), ("filters", {}),
                              ("bad", 0), ("first_seen", None)):
            self.bulk.setdefault(name, default)  # a checkpoint an earlier release saved

    def run(self) -> None:
        """Raises BulkGiveUp when bulk operations cannot give a whole result; the caller pages instead."""
        bulk = self.bulk
        drop_discarded(self.pages, self.key, bulk, self.save, self.lease.fence)
        while True:
            if bulk["operation"] is None:
                self._start()
            ended_short = self._finish_operation()
            if ended_short is None:
                break
            self._next_operation(ended_short)
        if bulk["records"] == 0 and bulk["planned"] > 0:
            raise BulkGiveUp(f"the bulk export found no {self.data_type}, but Shopify counted {bulk['planned']} "
                             "when the sync was planned")
        bulk["done"] = True
        self.save()

    # -- starting ----------------------------------------------------------------------------------------

    def _start(self) -> None:
        bulk = self.bulk
        if len(bulk["history"]) >= MAX_OPERATIONS:
            raise BulkGiveUp(f"{len(bulk['history'])} bulk operations ended without a whole result (last: "
                             f"{bulk['history'][-1]['end']})")
        self.lease.check()  # no operation is started by a sync that already lost its lease
        operation = self._adopt_or_cancel_leftovers()
        if operation is None:
            # Saved before the start: only a run that got this far can have left an operation without its id.
            bulk["starting_at"] = _iso_now()
            self.save()
            operation = self._start_when_a_slot_is_free()
        bulk.update(operation=operation.id, starting_at=None, first_seen=time.time(), offset=0, op_records=0,
                    op_lines=0)
        self.save()  # the id first: a run that stops from here on polls this operation, it never starts another
        self.status(f"Bulk export of {self.data_type} started ({operation.id}).")

    def _adopt_or_cancel_leftovers(self, started: str | None = None, running_only: bool = False
                                   ) -> BulkOperation | None:
        """The operation an earlier try started for exactly this query and lost the id of (running or
        completed, created after `starting_at`: a run that stopped, or a start whose answer was lost); every
        other running operation of ours for this data type that no checkpoint holds is cancelled, so it does
        not hold one of the shop's bulk slots. `started` is an operation just started: its duplicates (a start
        sent twice) are cancelled, and it is kept. `running_only`: adopt no operation that has ended."""
        bulk = self.bulk
        ours = {entry["operation"] for entry in bulk["history"]}
        held = self.held_elsewhere()
        starting_at = bulk.get("starting_at")
        since = _timestamp(starting_at) - CLOCK_SLACK_SECONDS if starting_at else None
        adopted = None
        for operation in self.operations.recent():  # newest first
            if bulk_listing_type(operation.query) != self.data_type or operation.id in held or operation.id == started:
                continue
            if (started is None and adopted is None and operation.id not in ours and since is not None
                    and operation.query == bulk["query"]
                    and operation.status in (("CREATED", "RUNNING") if running_only else ("CREATED", "RUNNING",
                                                                                          "COMPLETED"))
                    and (operation.created_timestamp() or 0) >= since):
                log.warning("adopting bulk operation %s (%s): it runs exactly our query, started by a try that "
                            "lost its id", operation.id, operation.status)
                adopted = operation
            elif not operation.ended:
                self.lease.check()  # a run that lost its lease cancels nothing of the one that has it
                log.warning("cancelling bulk operation %s: an export of %s that no checkpoint holds (left by a "
                            "run that stopped, started twice, or superseded)", operation.id, self.data_type)
                self.operations.cancel(operation.id)
        return adopted

    def _start_when_a_slot_is_free(self) -> BulkOperation:
        first, longest, _ = self.poll
        began, pause = time.monotonic(), first
        while True:
            try:
                operation = self.operations.start(self.bulk["query"], group_objects=True)
            except BulkQueryRefusedError as error:
                self.bulk["starting_at"] = None  # nothing was started
                raise BulkGiveUp(str(error)) from None
            except BulkInProgressError:
                # Our own start, sent again after its answer was lost, may be what holds the slot.
                adopted = self._adopt_or_cancel_leftovers(running_only=True)
                if adopted is not None:
                    return adopted
                # Other exports of this shop (another data type, another app) hold every slot. Still busy after
                # `slot_wait`: transient, so Dagster's retry or the next run tries again.
                waited = time.monotonic() - began
                if waited >= self.slot_wait:
                    raise
                self.status(f"Waiting for a free bulk operation slot to export {self.data_type} "
                            f"({waited:.0f} s so far).")
                time.sleep(pause)
                pause = min(longest, pause * 2)
                self.lease.check()
                continue
            self._adopt_or_cancel_leftovers(started=operation.id)
            return operation

    # -- one operation's end -------------------------------------------------------------------------------

    def _finish_operation(self) -> str | None:
        """Wait for the current operation and read its result. None when it gave a whole result; else why not
        (what it did give, a partial result included, is staged)."""
        bulk = self.bulk
        first, longest, limit = self.poll

        def progress(operation: BulkOperation) -> None:
            self.status(f"Bulk export of {self.data_type}: {operation.status}, {operation.object_count} "
                        "objects so far.")

        try:
            operation_id = bulk["operation"]
            ended = (lambda: self.notices.ended(operation_id)) if self.notices is not None else None
            operation = self.operations.wait(operation_id, progress, first, longest, limit,
                                             first_seen=bulk.get("first_seen"), ended=ended)
        except BulkOperationUnknownError as error:
            return str(error)
        except BulkOperationStuckError as error:
            self.operations.cancel(bulk["operation"])  # it would hold one of the shop's bulk slots for days
            raise BulkGiveUp(f"{error}; cancelled") from None
        try:
            url = self.operations.result_url(operation)
        except MissingScopeError:
            bulk["operation"] = None  # once the scope is granted, the next run starts anew
            self.save()
            raise
        except BulkResultExpiredError as error:
            return str(error)
        except BulkOperationFailedError as error:
            if operation.partial_data_url:
                self._read(operation.partial_data_url, partial=True)
            return str(error)
        if url is not None:
            try:
                self._read(url, partial=False)
            except BulkResultExpiredError as error:
                return str(error)
        # Never "whole" on less than the operation counted: a file that miscounts is not retried, it is paged.
        if bulk["op_records"] != operation.root_object_count or (url and bulk["op_lines"] != operation.object_count):
            raise BulkGiveUp(f"the bulk result held {bulk['op_records']} {self.data_type} in {bulk['op_lines']} "
                             f"lines, but the operation counted {operation.root_object_count} in "
                             f"{operation.object_count}")
        self._remember(operation.status)
        return None

    def _next_operation(self, why: str) -> None:
        """After an operation that ended short: continue after the last staged record, or start over."""
        bulk = self.bulk
        self._remember(why)
        if self._can_continue():
            bulk["query"] = bulk_listing_query(self.data_type, {**bulk["filters"], "id_after": bulk["last_id"]})
            message = (f"The bulk export of {self.data_type} ended short ({why[:200]}); {bulk['records']} records "
                       f"are kept and a new bulk operation exports those after {bulk['last_id']}.")
        else:
            discard(self.state)
            bulk["query"] = bulk_listing_query(self.data_type, bulk["filters"])
            message = (f"The bulk export of {self.data_type} ended short ({why[:200]}); a new bulk operation "
                       "exports them all again.")
        bulk.update(operation=None, offset=0, op_records=0, op_lines=0)
        self.save()  # saved before anything is dropped: a run that stops now drops the pages next time
        log.warning("%s", message)
        self.status(message)
        drop_discarded(self.pages, self.key, bulk, self.save, self.lease.fence)

    def _can_continue(self) -> bool:
        """Whether the staged records are every one up to the last: they came in id order (checked page by
        page), and Shopify counts no more records up to that id than we have. Then what is missing is exactly
        what comes after it (records created meanwhile have higher ids)."""
        bulk = self.bulk
        if not (bulk["records"] and bulk["ascending"]):
            return False
        up_to_last = self.source.count(self.data_type, search_query({**bulk["filters"], "id_max": bulk["last_id"]}))
        if up_to_last > bulk["records"]:
            log.warning("the bulk export of %s staged %d records up to id %s, but Shopify counts %d: the result was "
                        "not in id order, so the export starts over", self.data_type, bulk["records"],
                        bulk["last_id"], up_to_last)
            return False
        return True

    def _remember(self, end: str) -> None:
        bulk = self.bulk
        if not bulk["history"] or bulk["history"][-1]["operation"] != bulk["operation"]:
            bulk["history"].append({"operation": bulk["operation"], "end": end[:300], "records": bulk["op_records"]})

    # -- reading a result --------------------------------------------------------------------------------

    def _read(self, url: str, partial: bool) -> None:
        """Stage the records of a result file from the saved offset. A partial file's last record is held back
        (it may lack items; the next operation exports it again), and one that cannot be read on (cut mid-line,
        expired, refused) just ends: what it gave stays staged, the next operation asks for the rest."""
        bulk = self.bulk
        download = ResultDownload(self.source.client.settings)
        batch: list[dict] = []
        try:
            records = stitch(download.lines(url, bulk["offset"]), NESTED[self.data_type][0], bulk["offset"],
                             hold_last=partial)
            resume = bulk["offset"]
            for record in records:
                batch.append(record.document)
                resume = record.resume_offset
                if len(batch) == PAGE_RECORDS:
                    self._stage(batch, resume)
                    self.status(f"Reading the bulk result of {self.data_type}: {bulk['records']} records staged.")
                    batch = []
            if batch:
                self._stage(batch, resume)
        except (UnexpectedAnswerError, ShopifyPermanentError, BulkResultExpiredError) as error:
            if partial:
                log.warning("reading the partial bulk result of %s stopped (%s); the next operation exports the "
                            "rest", self.data_type, error)
                return
            if isinstance(error, BulkResultExpiredError):
                raise
            if isinstance(error, UngroupedResultError | ShopifyPermanentError):
                raise BulkGiveUp(str(error)) from None  # storage refused the file (4xx): pages instead
            raise BulkGiveUp(f"the bulk result is broken: {error}") from None
        finally:
            download.close()

    def _stage(self, batch: list[dict], resume: int) -> None:
        bulk, state = self.bulk, self.state
        number = page_number(BULK_SLICE, bulk["pages"] + 1)
        problems = record_problems(self.data_type, batch, page=number, shape="graphql")
        self.pages.put(self.key, number, dumps_json({self.data_type: batch}).encode(), len(batch),
                       f"bulk {bulk['operation']}", self.lease.fence)
        if problems:
            note_bad_records(state, problems)
            bulk["bad"] += len(problems)
        ids = [_legacy_id(record) for record in batch]
        before = [bulk["last_id"], *ids[:-1]]
        ascending = None not in ids and all(a is None or a < b for a, b in zip(before, ids, strict=True))
        lines = sum(1 + len(record[NESTED[self.data_type][0]]["nodes"]) for record in batch)
        bulk.update(offset=resume, pages=bulk["pages"] + 1, records=bulk["records"] + len(batch),
                    op_records=bulk["op_records"] + len(batch), op_lines=bulk["op_lines"] + lines,
                    ascending=bulk["ascending"] and ascending, last_id=ids[-1])
        state["pages"] += 1
        state["records"] += len(batch)
        self.save()


def fetch_bulk(source: GraphQLSource, pages: PageStore, key: str, data_type: str, state: dict,
               save: Callable[[], None], status: Callable[[str], None], lease, poll: tuple[float, float, float],
               slot_wait: float = 3600.0, held_elsewhere: Callable[[], set[str]] = set,
               notices: BulkFinishNotices | None = None) -> None:
    """Run (or resume) the bulk fetch of `state["bulk"]` to its end (see BulkFetch)."""
    BulkFetch(source, pages, key, data_type, state, save, status, lease, poll, slot_wait, held_elsewhere,
              notices).run()


def discard(state: dict) -> None:
    """Take the staged bulk pages out of the counts and mark them to be dropped (by `drop_discarded`, after
    the checkpoint is saved)."""
    bulk = state["bulk"]
    state["pages"] -= bulk["pages"]
    state["records"] -= bulk["records"]
    state["bad_records"] = [p for p in state.get("bad_records", []) if p["page"] // PAGES_PER_SLICE != BULK_SLICE]
    if "bad_record_count" in state:
        state["bad_record_count"] = max(0, state["bad_record_count"] - bulk.get("bad", 0))
    bulk.update(pages=0, records=0, op_records=0, op_lines=0, last_id=None, ascending=True, bad=0,
                drop_pending=True)


def drop_discarded(pages: PageStore, key: str, bulk: dict, save: Callable[[], None], fence) -> None:
    """Drop the bulk pages `discard` marked, once the checkpoint that no longer counts them is saved."""
    if bulk.get("drop_pending"):
        pages.drop(key, page_number(BULK_SLICE, 0), page_number(BULK_SLICE + 1, 0) - 1, fence)
        bulk["drop_pending"] = False
        save()


def _legacy_id(record: dict) -> int | None:
    tail = str(record.get("id", "")).rpartition("/")[2]
    return int(tail) if tail.isascii() and tail.isdigit() else None


def _iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp(iso: str | None) -> float:
    try:
        return datetime.fromisoformat((iso or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
