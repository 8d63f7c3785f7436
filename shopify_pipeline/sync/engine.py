"""One sync of (user, sync type, data type): fetch pages with checkpoints, load them, finish or keep.

Flow (DESIGN.md): take the lease → load the checkpoint or plan → fetch every slice, staging each page
and then saving the checkpoint → load staged pages in batches of 25, saving failed batches → when
nothing failed, advance the high-water mark and clear the checkpoint and staged pages. Anything that
failed stays recorded, so the next run redoes only that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from shopify_pipeline.dynamo.batch_writer import BatchWriter
from shopify_pipeline.dynamo.client import dynamodb_client, translate_errors
from shopify_pipeline.dynamo.codec import GRAPHQL, REST, record_key, shape_of, updated_at
from shopify_pipeline.dynamo.connections import Connection, ConnectionStore
from shopify_pipeline.dynamo.lease import HeldLease, LeaseLostError, new_owner
from shopify_pipeline.dynamo.notices import BulkFinishNotices
from shopify_pipeline.dynamo.pages import PAGES_PER_SLICE, PageStore, page_number, sync_key
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.dynamo.redaction import Redactions
from shopify_pipeline.dynamo.state import Checkpoint, CheckpointError, StateStore
from shopify_pipeline.errors import PermanentError, TransientError
from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.settings import (
    AUTO,
    DATA_TYPES,
    SYNC_TYPE_CHOICES,
    SYNC_TYPES,
    Settings,
    SettingsError,
    ShopifySettings,
)
from shopify_pipeline.shopify.auth import ExpiringTokens, OAuthClient
from shopify_pipeline.shopify.client import ShopifyClient, shop_base_url
from shopify_pipeline.shopify.errors import InvalidCursorError, ShopifyTransientError
from shopify_pipeline.shopify.pacer import FixedGapPacer
from shopify_pipeline.shopify.sources import PageSource, page_source
from shopify_pipeline.sync.bulk_fetch import BulkGiveUp, discard, drop_discarded, fetch_bulk, plan_bulk
from shopify_pipeline.sync.records import BadRecordError, bad_records_message, note_bad_records, record_problems
from shopify_pipeline.sync.tokens import (
    LeaseRefreshLock,
    SecretsManagerVault,
    TokenReferenceError,
    resolve_client_credentials,
    resolve_token,
    secrets_client,
    token_secret_id,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DELETIONS_SLICE = 999  # staged pages of destroy events live in this slice, after the record slices
MAX_CURSOR_RESTARTS = 3  # a slice whose cursor Shopify refuses starts over this often in one run, then fails


class ApiChangedError(PermanentError):
    """The connection's API changed under a sync that depends on the old one (see the message for what to do)."""

    reason = "api_changed"


class UnexpectedError(PermanentError):
    """An exception none of our types describe; permanent, so an orchestrator does not retry a bug."""

    reason = "unexpected"

    @classmethod
    def of(cls, error: Exception, stage: str, user_id: str, data_type: str) -> UnexpectedError:
        return cls(f"an unexpected {type(error).__name__} in the {stage} of {data_type} for user {user_id}: "
                   f"{str(error)[:300]}. The checkpoint is kept, so nothing fetched is lost; please report this with "
                   "the log, then run the sync again.")


@dataclass(frozen=True)
class SyncOptions:
    """How a sync plans its work."""

    slices: int = 4  # full syncs split the created_at range into at most this many slices, fetched in parallel
    lookback: timedelta = timedelta(hours=1)  # daily syncs re-read this much before the high-water mark
    min_records_to_slice: int = 1000  # smaller listings are fetched as one slice
    # Each slice gets at least this many pages of the count (1 000 orders, 4 pages of 250: one slice), so the
    # requests that plan slices and the part-filled last page of each stay a small share of the sync's.
    min_pages_per_slice: int = 4
    # Full syncs of GraphQL connections with at least this many records export them with one bulk operation
    # (None: never). Polls start at the first interval and double up to the second; the third is the most
    # an operation may run (Shopify's limit is 10 days).
    bulk_threshold: int | None = 10_000
    bulk_poll: tuple[float, float, float] = (1.0, 30.0, 10 * 24 * 3600.0)
    # How long to wait for a free bulk slot when the shop already runs as many bulk queries as it allows.
    bulk_slot_wait: float = 3600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncOptions:
        """The defaults, with SHOPIFY_BULK_THRESHOLD (a number, or `none`: never bulk) and
        SHOPIFY_BULK_SLOT_WAIT_SECONDS from the environment (the CLI's knobs; Dagster has the resource's)."""
        env = os.environ if environ is None else environ
        values: dict = {}
        threshold = env.get("SHOPIFY_BULK_THRESHOLD")
        try:
            if threshold:
                values["bulk_threshold"] = None if threshold.lower() == "none" else int(threshold)
            if env.get("SHOPIFY_BULK_SLOT_WAIT_SECONDS"):
                values["bulk_slot_wait"] = float(env["SHOPIFY_BULK_SLOT_WAIT_SECONDS"])
        except ValueError:
            raise SettingsError("SHOPIFY_BULK_THRESHOLD must be a number of records or `none`, "
                                "SHOPIFY_BULK_SLOT_WAIT_SECONDS a number of seconds") from None
        return cls(**values)


@dataclass
class FetchResult:
    sync_type: str = ""
    pages: int = 0
    records: int = 0
    pages_this_run: int = 0
    records_this_run: int = 0
    failed_pages: list[dict] = field(default_factory=list)
    bad_records: list[dict] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttle_wait_seconds: float = 0.0
    resumed: bool = False
    only_recent_orders: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed_pages


@dataclass
class LoadResult:
    sync_type: str = ""
    nothing_to_load: bool = False  # no sync in progress: this run wrote nothing, and says so
    pages: int = 0
    records_written: int = 0
    failed_batches: list[dict] = field(default_factory=list)  # saved by this run
    still_failed: list[str] = field(default_factory=list)  # ranges of every batch of the sync still failing
    retried_batches: int = 0
    deleted: int = 0
    finished: bool = False
    seconds: float = 0.0
    preview: list[dict] = field(default_factory=list)


@dataclass
class RetryResult:
    success: bool
    retried: int
    still_failed: int


class SyncEngine:
    """Runs syncs against one DynamoDB (tables from `settings`) and Shopify (`shopify_settings`)."""

    def __init__(
        self,
        settings: Settings,
        shopify_settings: ShopifySettings | None = None,
        options: SyncOptions | None = None,
        dynamodb=None,
        secrets=None,
    ) -> None:
        """`secrets` is a Secrets Manager client (under Dagster, dagster-aws's SecretsManagerResource makes it);
        by default one is made when a connection first needs it."""
        self.settings = settings
        self._secrets = secrets
        self.shopify_settings = shopify_settings or ShopifySettings()
        self.options = options or SyncOptions()
        self.dynamodb = dynamodb or dynamodb_client(settings)
        self.state = StateStore(self.dynamodb, settings)
        self.pages = PageStore(self.dynamodb, settings)
        self.connections = ConnectionStore(self.dynamodb, settings)
        self.writer = BatchWriter(self.dynamodb, settings)
        self.owner = new_owner()

    def shopify_client(self, connection: Connection, sync_type: str | None = None) -> ShopifyClient:
        """A client for the user's shop; with `SHOPIFY_PACING=fixed`, paced by the seed's fixed gaps."""
        shopify = self.shopify_settings
        pacer = None
        if shopify.pacing == "fixed":
            gap = shopify.fixed_gap_daily_seconds if sync_type == "daily" else shopify.fixed_gap_seconds
            pacer = FixedGapPacer(gap)
        return ShopifyClient(connection.shop, self.access_tokens(connection), shopify, pacer=pacer)

    @property
    def secrets(self):
        if self._secrets is None:
            self._secrets = secrets_client()
        return self._secrets

    def access_tokens(self, connection: Connection) -> str | ExpiringTokens:
        """The connection's static token, or its expiring tokens (refreshed under the user's refresh lock)."""
        if connection.auth != "expiring":
            secrets = self.secrets if connection.token_ref.startswith("secretsmanager:") else None
            return resolve_token(connection.token_ref, secrets)
        if not connection.client_ref:
            raise TokenReferenceError(f"the expiring connection of {connection.user_id} has no client credentials "
                                      "reference: run `users add … --auth expiring --client-ref …` again")
        shopify = self.shopify_settings
        credentials = resolve_client_credentials(connection.client_ref, self.secrets)
        oauth = OAuthClient(shop_base_url(connection.shop, shopify.allow_local_shops), credentials, shopify)
        secret_id = token_secret_id(connection.token_ref)
        # The lock is the pair's, not the user's: every connection sharing the secret refreshes under it.
        return ExpiringTokens(SecretsManagerVault(self.secrets, secret_id),
                              LeaseRefreshLock(self.state.leases, secret_id), oauth,
                              margin_seconds=shopify.token_refresh_margin_seconds)

    def page_source(self, connection: Connection, sync_type: str | None = None) -> PageSource:
        """How this connection reads Shopify: its API (GraphQL by default, REST if chosen) over a client."""
        return page_source(connection.api, self.shopify_client(connection, sync_type))

    def resolve_sync_type(self, user_id: str, data_type: str, sync_type: str) -> str:
        """`sync_type`, or for `auto`: the unfinished sync of this data type if there is one (the most
        recently saved, to resume it), else `daily` when a sync finished before, else `initial`."""
        if sync_type != AUTO:
            return sync_type
        connection = self.connections.get(user_id)
        unfinished = []
        for candidate in SYNC_TYPES:
            checkpoint = self.state.load_checkpoint(user_id, candidate, data_type)
            if checkpoint is not None:
                unfinished.append((checkpoint.updated_at or "", candidate))
        if unfinished:
            return max(unfinished)[1]
        if not connection.high_water.get(data_type):
            return "initial"
        # Documents of the other API's shape are rewritten by a full sync, not patched by a daily one.
        return "daily" if connection.stored_shape(data_type) == connection.api else "manual"

    def staging_key(self, user_id: str, sync_type: str, data_type: str) -> str | None:
        """The key of the staged pages of the sync in progress (named by its checkpoint), or None."""
        checkpoint = self.state.load_checkpoint(user_id, sync_type, data_type)
        return sync_key(user_id, sync_type, data_type, checkpoint.state.get("generation")) if checkpoint else None

    # Fetch ---------------------------------------------------------------------------------------

    def fetch(self, user_id: str, sync_type: str, data_type: str, progress: Progress | None = None) -> FetchResult:
        """Fetch and stage every page still to fetch, saving the checkpoint after each page.

        Returns counts and the pages that failed after their retries (their slices keep their cursors).
        Raises a PermanentError (bad token, frozen shop …) after recording a failed status, and
        LeaseLostError, having written nothing more, when another sync took over.
        """
        _check(sync_type, data_type)
        started = time.monotonic()
        connection = self.connections.get(user_id)
        with self._lease(user_id, data_type) as lease:
            source = None
            try:
                sync_type = self.resolve_sync_type(user_id, data_type, sync_type)  # under the lease: no race
                _check_api(connection, sync_type, data_type)
                source = self.page_source(connection, sync_type)
                return self._fetch(source, connection, sync_type, data_type, progress or _quiet, started, lease)
            except (PermanentError, TransientError) as error:
                self._fail(user_id, sync_type, data_type, "fetch", error, lease)
                raise
            except Exception as error:  # a bug or an answer we never imagined: recorded, never retried blindly
                unexpected = UnexpectedError.of(error, "fetch", user_id, data_type)
                self._fail(user_id, sync_type, data_type, "fetch", unexpected, lease)
                raise unexpected from error
            finally:
                if source is not None:
                    source.close()

    def _fetch(self, source: PageSource, connection: Connection, sync_type: str, data_type: str,
               progress: Progress, started: float, lease: HeldLease) -> FetchResult:
        user_id = connection.user_id
        fence = lease.fence
        result = FetchResult(sync_type=sync_type)
        checkpoint = self.state.load_checkpoint(user_id, sync_type, data_type)
        if checkpoint is None:
            self.state.set_status(user_id, data_type, "fetching", sync_type, fence=fence, stage="plan",
                                  message=f"Planning the {sync_type} sync of {data_type}...")
            checkpoint = self.state.save_checkpoint(Checkpoint(
                user_id, sync_type, data_type, self._plan(source, connection, sync_type, data_type)), fence)
        else:
            result.resumed = True
            if not checkpoint.state.get("fetch_done"):  # nothing left to ask Shopify: any API can finish it
                _check_resumable(checkpoint, connection)
        state = checkpoint.state
        key = sync_key(user_id, sync_type, data_type, state.get("generation"))
        result.only_recent_orders = bool(state.get("only_recent_orders"))
        for piece in state["slices"]:  # failed pages are fetched again, from their slice's cursor
            piece["failed"] = None
        lock = threading.Lock()
        holder = {"checkpoint": checkpoint}
        stop = threading.Event()
        noun = data_type
        if state.get("bulk") and (not state["bulk"]["done"] or state["bulk"].get("drop_pending")):
            holder["checkpoint"] = self._fetch_bulk(source, key, data_type, state, holder["checkpoint"], lease,
                                                    progress)
        work = [piece for piece in state["slices"] if not piece["done"]]

        stats = source.stats

        def save(piece: dict, page_records: int, following: str | None, problems: list[dict]) -> None:
            with lock:
                piece["next"] = following
                piece["done"] = following is None
                piece["pages"] += 1
                piece["records"] += page_records
                state["pages"] += 1
                state["records"] += page_records
                if problems:
                    note_bad_records(state, problems)
                result.pages_this_run += 1
                result.records_this_run += page_records
                holder["checkpoint"] = self.state.save_checkpoint(
                    Checkpoint(user_id, sync_type, data_type, state, holder["checkpoint"].version), fence)
                message = f"Fetching page {state['pages']}... ({state['records']} {noun} so far)"
                if stats.throttled or stats.pace_wait_seconds >= 1:
                    message += (f" [rate limit: {stats.throttled} throttled answers waited out, "
                                f"{stats.pace_wait_seconds:.0f}s paced]")
                self.state.set_status(user_id, data_type, "fetching", sync_type, fence=fence, stage="fetch",
                                      page=state["pages"], recordCount=state["records"], message=message)
            progress(message)

        def run_slice(piece: dict) -> None:
            seen: set[str] = set()  # the positions this slice fetched in this run: going back to one is a loop
            restarts = 0
            while not piece["done"] and not stop.is_set():
                seen.add(piece["next"] or "")
                try:
                    page = source.page(data_type, _slice_filters(state, piece), piece["next"])
                except InvalidCursorError as error:
                    restarts += 1
                    if piece["next"] is None or restarts > MAX_CURSOR_RESTARTS:  # not a cursor Shopify can refuse
                        with lock:
                            piece["failed"] = {"page": piece["pages"] + 1, "error": str(error)[:300]}
                        return
                    log.warning("slice %s: Shopify refused its cursor; restarting the slice", piece["i"])
                    # Its pages are fetched anew; older ones must not be loaded after them.
                    self.pages.drop(key, page_number(piece["i"], 0), page_number(piece["i"] + 1, 0) - 1, fence)
                    with lock:
                        state["pages"] -= piece["pages"]
                        state["records"] -= piece["records"]
                        piece.update(next=None, pages=0, records=0)
                    seen.clear()
                    continue
                except TransientError as error:
                    if isinstance(error, LeaseLostError):
                        stop.set()
                        raise
                    with lock:
                        piece["failed"] = {"page": piece["pages"] + 1, "error": str(error)[:300]}
                    return
                except PermanentError:
                    stop.set()
                    raise
                if page.next is not None and page.next in seen:
                    with lock:
                        piece["failed"] = {"page": piece["pages"] + 1, "error": (
                            f"Shopify's next link after page {piece['pages'] + 1} of slice {piece['i']} points back "
                            "to a page this slice already fetched (a cursor loop); the slice stopped there instead "
                            "of staging the same pages forever. Run the sync again; if it repeats, clear the "
                            "checkpoint and report the shop to Shopify support.")}
                    return
                number = page_number(piece["i"], piece["pages"] + 1)
                problems = record_problems(data_type, page.records, page=number, shape=source.api)
                self.pages.put(key, number, page.body, len(page.records), page.where, fence)
                save(piece, len(page.records), page.next, problems)

        with ThreadPoolExecutor(max(1, min(len(work), self.options.slices)), thread_name_prefix="fetch") as pool:
            futures = [pool.submit(run_slice, piece) for piece in work]
            errors = [f.exception() for f in futures if f.exception() is not None]
        result.requests, result.retries = stats.requests, stats.retries
        result.throttled, result.throttle_wait_seconds = stats.throttled, stats.throttle_wait_seconds
        if errors:
            raise next((e for e in errors if isinstance(e, LeaseLostError)), errors[0])
        deletes = state.get("deletes")
        if deletes and not deletes["done"] and not any(p["failed"] for p in state["slices"]):
            holder["checkpoint"] = self._fetch_deletions(source, key, data_type, state, holder["checkpoint"], lease)
        result.failed_pages = [{"slice": p["i"], **p["failed"]} for p in state["slices"] if p["failed"]]
        # What this run's fetch cost: shown by every later status of the sync (`shopify-pipeline status`).
        state["last_run"] = {"requests": stats.requests, "retries": stats.retries, "throttled": stats.throttled,
                             **_api_version_note(source, self.shopify_settings.api_version)}
        state["fetch_done"] = (not result.failed_pages and all(p["done"] for p in state["slices"])
                               and state.get("bulk", {}).get("done", True)
                               and state.get("deletes", {}).get("done", True))
        self.state.save_checkpoint(
            Checkpoint(user_id, sync_type, data_type, state, holder["checkpoint"].version), fence)
        result.pages, result.records = state["pages"], state["records"]
        result.bad_records = list(state.get("bad_records", []))
        result.seconds = time.monotonic() - started
        counts = {"page": state["pages"], "recordCount": state["records"], **state["last_run"]}
        if result.failed_pages:
            self.state.set_status(
                user_id, data_type, "failed", sync_type, fence=fence, stage="fetch", **counts,
                failedPages=len(result.failed_pages),
                message=f"{len(result.failed_pages)} page(s) of {data_type} failed after retries; "
                "run the sync again to fetch only those.",
                error={"failedPages": result.failed_pages, "permanent": False},
            )
        elif result.bad_records:
            self.state.set_status(
                user_id, data_type, "failed", sync_type, fence=fence, stage="fetch", **counts,
                message=bad_records_message(data_type, state), badRecords=state.get("bad_record_count"),
                error={"type": BadRecordError.__name__, "reason": BadRecordError.reason, "permanent": True,
                       "badRecords": result.bad_records},
            )
        else:
            self.state.set_status(user_id, data_type, "fetched", sync_type, fence=fence, stage="fetch", **counts,
                                  message=f"Fetched {state['pages']} pages ({state['records']} {noun}).")
        return result

    def _fetch_bulk(self, source: PageSource, key: str, data_type: str, state: dict, checkpoint: Checkpoint,
                    lease: HeldLease, progress: Progress) -> Checkpoint:
        """Fetch through the bulk operation of `state["bulk"]`; if it cannot give a whole result, drop what it
        staged and plan paged slices instead (said in the status). Returns the checkpoint as last saved."""
        holder = {"checkpoint": checkpoint}
        user_id, sync_type = checkpoint.user_id, checkpoint.sync_type

        def save() -> None:
            holder["checkpoint"] = self.state.save_checkpoint(
                Checkpoint(user_id, sync_type, data_type, state, holder["checkpoint"].version), lease.fence)

        def status(message: str) -> None:
            self.state.set_status(user_id, data_type, "fetching", sync_type, fence=lease.fence, stage="fetch",
                                  page=state["pages"], recordCount=state["records"], message=message)
            progress(message)

        def held_elsewhere() -> set[str]:
            """Bulk operations the user's checkpoints of this data type under other sync types hold."""
            held = set()
            for other in SYNC_TYPES:
                if other != sync_type:
                    with contextlib.suppress(CheckpointError):
                        found = self.state.load_checkpoint(user_id, other, data_type)
                        if found and (found.state.get("bulk") or {}).get("operation"):
                            held.add(found.state["bulk"]["operation"])
            return held

        bulk = state["bulk"]
        if not bulk["done"]:
            try:
                fetch_bulk(source, self.pages, key, data_type, state, save, status, lease, self.options.bulk_poll,
                           self.options.bulk_slot_wait, held_elsewhere,
                           BulkFinishNotices(self.dynamodb, self.settings.tables.checkpoints, user_id))
            except BulkGiveUp as give_up:
                slices = self._slices(source, data_type)  # Shopify first: if this fails, nothing has changed
                message = (f"The bulk export of {data_type} gave no whole result ({give_up.reason}); fetching by "
                           "pages instead.")
                log.warning("%s: %s", user_id, message)
                # Saved before anything is dropped: a run that stops now drops the bulk pages next time and
                # never reads the bulk result again.
                discard(state)
                bulk.update(done=True, fallback=give_up.reason[:300])
                state["slices"] = [_slice(i, lo, hi) for i, (lo, hi) in enumerate(slices)]
                save()
                status(message)
        drop_discarded(self.pages, key, bulk, save, lease.fence)
        return holder["checkpoint"]

    def _fetch_deletions(self, source: PageSource, key: str, data_type: str, state: dict,
                         checkpoint: Checkpoint, lease: HeldLease) -> Checkpoint:
        """Stage the `destroy` events since the high-water mark, as pages of their own slice."""
        deletes = state["deletes"]
        seen: set[str] = set()
        restarts = 0
        while not deletes["done"]:
            seen.add(deletes["next"] or "")
            try:
                page = source.deletions_page(data_type, deletes["since"], deletes["next"])
            except InvalidCursorError:
                restarts += 1
                if deletes["next"] is None or restarts > MAX_CURSOR_RESTARTS:
                    raise
                # Read the events again from the start: deleting a record twice is harmless.
                log.warning("%s deletion events: Shopify refused the saved cursor; reading them again", data_type)
                deletes["next"] = None
                seen.clear()
                continue
            if page.next is not None and page.next in seen:
                raise ShopifyTransientError(
                    f"Shopify's next link of the {data_type} deletion events points back to a page already "
                    "fetched (a cursor loop); run the sync again.")
            self.pages.put(key, page_number(DELETIONS_SLICE, deletes["pages"] + 1), page.body, len(page.records),
                           page.where, lease.fence)
            deletes.update(next=page.next, done=page.next is None, pages=deletes["pages"] + 1)
            checkpoint = self.state.save_checkpoint(
                Checkpoint(checkpoint.user_id, checkpoint.sync_type, checkpoint.data_type, state, checkpoint.version),
                lease.fence)
        return checkpoint

    def _plan(self, source: PageSource, connection: Connection, sync_type: str, data_type: str) -> dict:
        """The work of a new sync: a daily sync reads what changed since the high-water mark; a full
        sync splits the created_at range into slices. Its generation names its staged pages, and it
        names its API: its positions are that API's, so it resumes on no other."""
        started_at = _iso(datetime.now(timezone.utc))
        state = {"started_at": started_at, "generation": uuid.uuid4().hex[:12], "api": source.api, "pages": 0,
                 "records": 0, "fetch_done": False}
        if data_type == "orders" and sync_type != "daily":  # daily runs stay at one request when little changed
            state["only_recent_orders"] = "read_all_orders" not in source.granted_scopes()
            if state["only_recent_orders"]:
                log.warning("%s: no read_all_orders scope: Shopify shows only the last 60 days of orders",
                            connection.user_id)
        high_water = connection.high_water.get(data_type)
        since = None
        if high_water:  # records deleted since the last finished sync are removed too
            since = _iso(datetime.fromisoformat(high_water.replace("Z", "+00:00")) - self.options.lookback)
            state["deletes"] = {"since": since, "next": None, "pages": 0, "done": False}
        if sync_type == "daily" and since:
            state["filters"] = {"updated_at_min": since}
            state["slices"] = [_slice(0, None, None)]
            return state
        state["filters"] = {}
        count = None
        if source.api == GRAPHQL and self.options.bulk_threshold is not None:
            count = source.count(data_type)
            if count >= self.options.bulk_threshold:  # one bulk export instead of pages (see bulk_fetch.py)
                state["bulk"] = plan_bulk(state["filters"], data_type, count)
                state["slices"] = []
                return state
        state["slices"] = [_slice(i, lo, hi) for i, (lo, hi) in enumerate(self._slices(source, data_type, count))]
        return state

    def _slices(self, source: PageSource, data_type: str, count: int | None = None
                ) -> list[tuple[str | None, str | None]]:
        """The created_at ranges (inclusive, to the second) of a full sync's slices, planned from the data: one
        slice unless the listing fills `min_pages_per_slice` pages per slice and the rate limit lets that many
        pages be fetched at once; otherwise about equal counts each, found with count requests (see
        `_balanced_bounds`), never an empty one. The first slice has no lower bound and the last none above,
        so nothing created meanwhile is missed."""
        if self.options.slices <= 1 or source.parallel_pages() == 1:
            return [(None, None)]  # one slice whatever the count: not even that request is needed
        total = source.count(data_type) if count is None else count
        parts = self._slice_count(source, data_type, total)
        if parts <= 1:
            return [(None, None)]
        oldest = source.oldest_created_at(data_type)
        try:
            low = datetime.fromisoformat(oldest.replace("Z", "+00:00")).astimezone(timezone.utc).replace(microsecond=0)
        except (TypeError, ValueError, OverflowError, AttributeError):
            return [(None, None)]  # no usable oldest record: one slice reads everything just the same
        high = datetime.now(timezone.utc).replace(microsecond=0)
        pages = -(-total // max(1, source.page_size(data_type)))
        # Count requests: one round (a cut each), and for a big listing up to four rounds, about 1 per 8 pages.
        budget = max(parts - 1, min(4 * (parts - 1), pages // 8))
        bounds = _balanced_bounds(lambda moment: source.count_created(data_type, _iso(moment)), low, high, total,
                                  parts, budget, workers=parts)
        # created_at_min/max are inclusive and to the second: each slice starts a second after the last ended.
        lows = [None, *(_iso(bound + timedelta(seconds=1)) for bound in bounds)]
        highs = [*(_iso(bound) for bound in bounds), None]
        return list(zip(lows, highs, strict=True))

    def _slice_count(self, source: PageSource, data_type: str, total: int) -> int:
        """How many slices a full sync of `total` records gets: at most `slices`, one per `min_pages_per_slice`
        pages, and no more than the rate limit lets fetch pages at once (more would only wait in the pacer)."""
        if total < self.options.min_records_to_slice:
            return 1
        pages = -(-total // max(1, source.page_size(data_type)))
        parts = min(self.options.slices, pages // max(1, self.options.min_pages_per_slice))
        parallel = source.parallel_pages()
        return max(1, parts if parallel is None else min(parts, parallel))

    # Load ----------------------------------------------------------------------------------------

    def load(self, user_id: str, sync_type: str, data_type: str, progress: Progress | None = None) -> LoadResult:
        """Write every staged page not loaded yet, in batches of 25; save batches that still fail.

        Failed batches of earlier runs of this sync are retried first. When the fetch is complete and
        nothing failed, the sync finishes: high-water mark, last-sync time, checkpoint and pages cleared.
        Raises BadRecordError (permanent) after writing the valid records when Shopify sent records that
        cannot be stored, and LeaseLostError, having written nothing more, when another sync took over.
        """
        _check(sync_type, data_type)
        started = time.monotonic()
        progress = progress or _quiet
        result = LoadResult()
        with self._lease(user_id, data_type) as lease:
            try:
                sync_type = result.sync_type = self.resolve_sync_type(user_id, data_type, sync_type)
                self._load(user_id, sync_type, data_type, progress, result, lease)
            except (PermanentError, TransientError) as error:
                self._fail(user_id, sync_type, data_type, "load", error, lease)
                raise
            except Exception as error:  # a bug or an answer we never imagined: recorded, never retried blindly
                unexpected = UnexpectedError.of(error, "load", user_id, data_type)
                self._fail(user_id, sync_type, data_type, "load", unexpected, lease)
                raise unexpected from error
        result.seconds = time.monotonic() - started
        return result

    def _load(self, user_id: str, sync_type: str, data_type: str, progress: Progress, result: LoadResult,
              lease: HeldLease) -> None:
        fence = lease.fence
        checkpoint = self.state.load_checkpoint(user_id, sync_type, data_type)
        if checkpoint is None:
            result.finished = result.nothing_to_load = True
            progress(f"Nothing to load for {user_id} {sync_type} {data_type}: no sync in progress.")
            return
        earlier = self._retry_failed_batches(user_id, sync_type, data_type, lease)
        result.retried_batches = earlier.retried
        state = checkpoint.state
        key = sync_key(user_id, sync_type, data_type, state.get("generation"))
        position = 0
        pages = list(self.pages.list(key))
        record_pages = sum(1 for page in pages if page.number // PAGES_PER_SLICE != DELETIONS_SLICE)
        index = 0
        for page in pages:
            deletions = page.number // PAGES_PER_SLICE == DELETIONS_SLICE
            index += 0 if deletions else 1
            first = position + 1
            position += 0 if deletions else page.records
            if page.loaded:
                continue
            lease.check()
            if deletions:
                events = parse_json(self.pages.body(key, page))["events"]
                deleted = [deleted_id(event, data_type) for event in events]
                result.deleted += self.writer.delete_records(user_id, data_type, [i for i in deleted if _is_id(i)])
                self.pages.mark_loaded(key, page.number, fence)
                continue
            records = parse_json(self.pages.body(key, page))[data_type]
            shape = state.get("api", REST)
            bad = {problem["index"] for problem in record_problems(data_type, records, page=page.number, shape=shape)}
            valid = [record for i, record in enumerate(records) if i not in bad] if bad else records
            report = self.writer.write_records(user_id, data_type, valid, first_position=first,
                                               before_batch=lease.check)
            for batch in report.failed_batches:
                self.state.save_failed_batch(user_id, sync_type, data_type, batch.first, batch.last,
                                             batch.records, batch.error, batch.attempts, fence)
                result.failed_batches.append({"range": batch.range, "count": len(batch.records),
                                              "error": batch.error})
            self.pages.mark_loaded(key, page.number, fence)
            result.pages += 1
            result.records_written += report.written
            if len(result.preview) < 5:
                result.preview.extend(valid[: 5 - len(result.preview)])
            message = f"Loading page {index} of {record_pages}... ({position} {data_type} written)"
            self.state.set_status(user_id, data_type, "loading", sync_type, fence=fence, stage="load", page=index,
                                  recordCount=position, message=message, **state.get("last_run", {}))
            progress(message)
        # Redacted customers and orders (customers/redact) stay redacted even if Shopify still served them.
        lease.check()
        Redactions(self.dynamodb, self.settings).reapply(RecordTable(self.dynamodb, self.settings, data_type),
                                                         self.writer, user_id, data_type)
        still_failed = self.state.failed_batches(user_id, sync_type, data_type)
        result.still_failed = [batch["range"] for batch in still_failed]
        if state.get("bad_records"):
            failed_pages = [p for p in state["slices"] if p.get("failed")]
            also = f" Also: {_failure_message(data_type, failed_pages, still_failed, sync_type, user_id)}." if (
                failed_pages or still_failed) else ""
            raise BadRecordError(bad_records_message(data_type, state) + also)
        result.finished = state.get("fetch_done", False) and not still_failed
        if result.finished:
            self._finish(user_id, sync_type, data_type, state, key, fence)
        else:
            failed_pages = [{"slice": p["i"], **p["failed"]} for p in state["slices"] if p.get("failed")]
            self.state.set_status(
                user_id, data_type, "failed", sync_type, fence=fence, stage="load", recordCount=position,
                **state.get("last_run", {}), failedPages=len(failed_pages), failedBatches=len(still_failed),
                failedBatchRanges=[b["range"] for b in still_failed],
                message=_failure_message(data_type, failed_pages, still_failed, sync_type, user_id),
                error={"failedPages": failed_pages, "permanent": False},
            )

    def _finish(self, user_id: str, sync_type: str, data_type: str, state: dict, key: str, fence) -> None:
        # The checkpoint goes first and fenced: a sync that lost its lease stops here, before the high-water mark.
        self.state.clear_checkpoint(user_id, sync_type, data_type, fence)
        api = state.get("api", REST)
        switched = sync_type != "daily" and self.connections.get(user_id).stored_shape(data_type) not in (None, api)
        self.connections.record_finished(user_id, sync_type, data_type, state["started_at"], api)
        self.pages.drop(key)
        message = f"Sync complete: {state['records']} {data_type} in {state['pages']} pages."
        left = RecordTable(self.dynamodb, self.settings, data_type).count(user_id, not_shape=api) if switched else 0
        if left:
            # A full sync rewrites what Shopify lists; what it no longer lists keeps the old API's shape.
            message += (f" {left} stored {data_type} still have the other API's shape: Shopify no longer lists them "
                        "(deleted without an event, or orders older than 60 days without read_all_orders). They "
                        "are kept; query `shape` to tell them apart.")
            log.warning("%s: %s", user_id, message)
        self.state.set_status(user_id, data_type, "completed", sync_type, fence=fence, stage="done",
                              page=state["pages"], recordCount=state["records"], **state.get("last_run", {}),
                              otherShapeRecords=left, message=message)

    # Recovery ------------------------------------------------------------------------------------

    def retry_failed_batches(self, user_id: str, sync_type: str, data_type: str) -> RetryResult:
        """Write the saved failed batches of (user, sync type, data type) again.

        Returns success (nothing left), how many batches were retried, and how many still fail.
        """
        _check(sync_type, data_type)
        with self._lease(user_id, data_type) as lease:
            return self._retry_failed_batches(user_id, sync_type, data_type, lease)

    def _retry_failed_batches(self, user_id: str, sync_type: str, data_type: str, lease: HeldLease) -> RetryResult:
        entries = self.state.failed_batches(user_id, sync_type, data_type)
        still_failed = 0
        for entry in entries:
            lease.check()
            records = self._not_older_than_stored(user_id, data_type, self.state.failed_batch_records(entry))
            first = int(entry["range"].split("-")[0])
            report = self.writer.write_records(user_id, data_type, records, first_position=first,
                                               before_batch=lease.check)
            if report.failed_batches:
                still_failed += 1
                continue
            self.state.remove_failed_batch(user_id, sync_type, data_type, entry["id"], lease.fence)
        return RetryResult(still_failed == 0, len(entries), still_failed)

    def _not_older_than_stored(self, user_id: str, data_type: str, records: list[dict]) -> list[dict]:
        """Drop records whose stored copy is newer, or of the other API's shape: a batch saved days ago must
        not undo a later sync."""
        if not records:
            return records
        table = self.settings.tables.records(data_type)
        keys = [{"userId": {"S": user_id}, "id": {"N": str(record_key(r))}} for r in records]
        stored: dict[int, str] = {}
        for start in range(0, len(keys), 100):
            request = {table: {"Keys": keys[start:start + 100], "ProjectionExpression": "id, updatedAt, shape",
                               "ConsistentRead": True}}
            while request:
                with translate_errors(table, self.dynamodb.meta.endpoint_url):
                    answer = self.dynamodb.batch_get_item(RequestItems=request)
                for item in answer["Responses"].get(table, []):
                    stored[int(item["id"]["N"])] = (item.get("updatedAt", {}).get("S", ""),
                                                    item.get("shape", {}).get("S", REST))
                request = answer.get("UnprocessedKeys") or None
        kept = []
        for record in records:
            when, shape = stored.get(record_key(record), ("", shape_of(record)))
            # Never replace a document of the other API's shape (saved before the connection switched APIs).
            if (updated_at(record) or "") >= when and shape == shape_of(record):
                kept.append(record)
        return kept

    def _fail(self, user_id: str, sync_type: str, data_type: str, stage: str, error: Exception,
              lease: HeldLease) -> None:
        if isinstance(error, LeaseLostError):
            return  # the status belongs to the sync that holds the lease now
        reason = getattr(error, "reason", type(error).__name__)
        with contextlib.suppress(LeaseLostError):
            self.state.set_status(user_id, data_type, "failed", sync_type, fence=lease.fence, stage=stage,
                                  message=str(error),
                                  error={"type": type(error).__name__, "reason": reason,
                                         "permanent": isinstance(error, PermanentError)})

    # Lease ---------------------------------------------------------------------------------------

    def _lease(self, user_id: str, data_type: str) -> HeldLease:
        """The (user, data type) lease for a `with` block, renewed by a heartbeat: no other sync of it can
        run meanwhile, and if this one loses it anyway, its writes are refused (see dynamo/lease.py)."""
        seconds = self.settings.lease_seconds
        return HeldLease(self.state.leases, user_id, data_type, self.owner, seconds, seconds / 3)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _slice(index: int, low: str | None, high: str | None) -> dict:
    return {"i": index, "min": low, "max": high, "next": None, "pages": 0, "records": 0, "done": False,
            "failed": None}


def _balanced_bounds(count_up_to: Callable[[datetime], int], low: datetime, high: datetime, total: int,
                     parts: int, budget: int, workers: int = 1) -> list[datetime]:
    """Moments (whole seconds) that cut the records created in [low, high] into up to `parts` runs of about
    `total / parts` each; `count_up_to(moment)` is the number created at or before it, one request each, at
    most `budget` of them. A round's requests are independent: `workers` of them are sent at once (the pacer
    still spaces them), so planning costs a round trip a round rather than one a cut.

    Each round probes every stretch between known counts that holds a cut not yet within a quarter of a slice
    of its target: where linear interpolation puts each cut (equal-time cuts on the first round, exact for
    evenly spread records), or, when the stretch before it proved empty, at a quarter, a sixteenth, … of it
    from its far end, so that a cluster of recent orders in a long-lived shop is found in a few rounds (and
    the same towards the start). Then each cut takes the known moment whose count is nearest its target; one
    whose count is 0, `total`, or another cut's is dropped: no slice is planned empty, fewer are instead."""
    known = {low - timedelta(seconds=1): 0, high: total}
    targets = [total * k / parts for k in range(1, parts)]
    tolerance = total / parts / 4
    spent = 0
    while spent < budget:
        moments = sorted(known)
        counts = [known[moment] for moment in moments]
        open_targets = [t for t in targets if not any(abs(counted - t) <= tolerance for counted in counts)]
        probes = set()
        for i in range(1, len(moments)):
            inside = [t for t in open_targets if counts[i - 1] < t <= counts[i]]
            start, span = moments[i - 1], (moments[i] - moments[i - 1]).total_seconds()
            if not inside:
                continue
            if i >= 2 and counts[i - 2] == counts[i - 1]:  # nothing before this stretch: records crowd its end
                offsets = [span - span / 4 ** j for j in range(1, len(inside) + 1)]
            elif i + 1 < len(moments) and counts[i + 1] == counts[i]:  # nothing after it: they crowd its start
                offsets = [span / 4 ** j for j in range(1, len(inside) + 1)]
            else:
                offsets = [span * (t - counts[i - 1]) / (counts[i] - counts[i - 1]) for t in inside]
            probes.update(start + timedelta(seconds=round(offset)) for offset in offsets
                          if 1 <= round(offset) < span)
        if not probes:
            break
        batch = sorted(probes)[:budget - spent]
        if workers > 1 and len(batch) > 1:
            with ThreadPoolExecutor(min(workers, len(batch)), thread_name_prefix="plan") as pool:
                known.update(zip(batch, pool.map(count_up_to, batch), strict=True))
        else:
            known.update((moment, count_up_to(moment)) for moment in batch)
        spent += len(batch)
    inside_counts = [(moment, counted) for moment, counted in known.items() if 0 < counted < total]
    cuts: dict[int, datetime] = {}
    for target in targets:
        if inside_counts:
            moment, counted = min(inside_counts, key=lambda point: (abs(point[1] - target), point[0]))
            cuts.setdefault(counted, moment)
    return sorted(cuts.values())


def _slice_filters(state: dict, piece: dict) -> dict:
    """The filters of a slice's first page: the sync's (daily: updated_at_min) and the slice's created_at range."""
    filters = dict(state.get("filters", {}))
    if piece.get("min"):
        filters["created_at_min"] = piece["min"]
    if piece.get("max"):
        filters["created_at_max"] = piece["max"]
    return filters


_EVENT_SUBJECTS = {"orders": "Order", "products": "Product", "customers": "Customer"}


def deleted_id(event: object, data_type: str) -> int | None:
    """The id of the `data_type` record a staged `destroy` event deleted (REST's `subject_id`, GraphQL's
    `subjectId` gid), or None for anything else: an event of another type never deletes a record of this one."""
    if not isinstance(event, dict):
        return None
    subject = _EVENT_SUBJECTS[data_type]
    if event.get("verb") == "destroy":
        return event.get("subject_id") if event.get("subject_type") in (None, subject) else None
    match = _SUBJECT_GID.match(str(event.get("subjectId")))
    if event.get("action") != "destroy" or match is None or match.group(1) != subject:
        return None
    if str(event.get("subjectType", "")).upper() not in ("", subject.upper()):
        return None
    return int(match.group(2))


_SUBJECT_GID = re.compile(r"^gid://shopify/([A-Za-z]+)/([0-9]+)$", re.ASCII)


def _check_api(connection: Connection, sync_type: str, data_type: str) -> None:
    """A daily sync patches stored documents: refused when they have the other API's shape."""
    stored = connection.stored_shape(data_type)
    if sync_type == "daily" and stored and stored != connection.api:
        raise ApiChangedError(
            f"{connection.user_id}'s {data_type} in DynamoDB are {stored.upper()}-shaped documents, but the "
            f"connection now uses {connection.api.upper()}: a daily sync would mix the two. Run a full sync that "
            f"rewrites them: `shopify-pipeline sync --user {connection.user_id} --type manual --data-types "
            f"{data_type}` (sync type auto chooses it too).")


def _check_resumable(checkpoint: Checkpoint, connection: Connection) -> None:
    """A checkpoint's positions (REST links, GraphQL cursors) mean something to one API only."""
    api = checkpoint.state.get("api", REST)
    if api != connection.api:
        raise ApiChangedError(
            f"the unfinished {checkpoint.sync_type} sync of {checkpoint.data_type} for {connection.user_id} was "
            f"started on {api.upper()}, but the connection now uses {connection.api.upper()}; its positions cannot "
            f"be resumed on another API. Switch back with `shopify-pipeline users add --user {connection.user_id} "
            f"--shop {connection.shop} --token-ref … --api {api}` to finish it, or clear it and start over: "
            "`shopify-pipeline checkpoint clear --user "
            f"{connection.user_id} --sync-type {checkpoint.sync_type} --data-type {checkpoint.data_type}`.")


def _api_version_note(source: PageSource, asked: str) -> dict:
    """The API version that answered, and a warning when it is not the one asked for (fell forward)."""
    answered = source.answered_version
    if not answered:
        return {}
    note = {"apiVersion": answered}
    if answered != asked and answered != "unstable":
        note["apiVersionWarning"] = (
            f"asked for API version {asked}, Shopify answered with {answered}: {asked} is no longer supported "
            "and fell forward. Set SHOPIFY_API_VERSION to a supported version.")
    return note


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check(sync_type: str, data_type: str) -> None:
    if sync_type not in SYNC_TYPE_CHOICES:
        raise SettingsError(f"unknown sync type {sync_type!r}; expected one of {', '.join(SYNC_TYPE_CHOICES)}")
    if data_type not in DATA_TYPES:
        raise SettingsError(f"unknown data type {data_type!r}; expected one of {', '.join(DATA_TYPES)}")


def _failure_message(data_type: str, failed_pages: list, failed_batches: list, sync_type: str, user: str) -> str:
    parts = []
    if failed_pages:
        parts.append(f"{len(failed_pages)} page(s) failed to fetch (run the sync again to fetch only those)")
    if failed_batches:
        ranges = ", ".join(b["range"] for b in failed_batches[:10])
        parts.append(f"{len(failed_batches)} batch(es) failed to write ({ranges}); retry with "
                     f"`shopify-pipeline retry-failed --user {user} --sync-type {sync_type} --data-type {data_type}`")
    return f"{data_type}: " + "; ".join(parts) if parts else f"{data_type}: fetch incomplete"


def _quiet(message: str) -> None:
    log.info(message)
