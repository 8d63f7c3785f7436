"""Two assets per data type: `shopify/{type}_pages` (fetch and stage) → `dynamodb/{type}` (load).

Assets are thin: read the partition (a user id) and the sync type, call the engine, log progress, return
metadata. Nothing large passes through an IO manager; the staged pages live in DynamoDB. Each asset
reports its own check (no failed pages, no failed batches) before it fails, so the failing run shows
the failed check with what failed in its metadata.
"""

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from shopify_pipeline.defs.partitions import user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.dynamo.codec import CodecError, record_key, updated_at
from shopify_pipeline.dynamo.lease import LeaseHeldError
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.errors import PermanentError, TransientError
from shopify_pipeline.logs import forward_logs
from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.sync.engine import FetchResult, LoadResult

GROUP = "shopify_sync"
OWNERS = ["team:data-platform"]
# Steps that call Shopify share this pool; its limit (dagster.yaml) caps concurrent fetches across runs.
SHOPIFY_API_POOL = "shopify_api"
# Transient failures (a page that failed after the client's own retries, DynamoDB throttling, a held
# lease) are tried again with exponential backoff and jitter; a retry fetches only the failed pages.
RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Each user is synced at least daily (03:00 UTC); two hours of slack for a slow or retried run.
FRESHNESS = timedelta(hours=26)

SyncType = Literal["auto", "initial", "manual", "daily"]  # settings.SYNC_TYPE_CHOICES, as a type the UI checks
DataType = Literal["orders", "products", "customers"]  # settings.DATA_TYPES
# The column that names a record in a preview, per data type.
_PREVIEW_NAME = {"orders": "name", "products": "title", "customers": "email"}


class SyncConfig(dg.Config):
    """Which sync this run is. The default, auto, brings the user's copy up to date: it resumes an
    unfinished sync (fetching only what is missing or failed), else runs daily, or initial the first time."""

    sync_type: SyncType = Field(
        default="auto",
        description="auto (resume what is unfinished, else daily, else initial), initial (first full copy), "
        "manual (a full re-sync) or daily (changes only)",
    )


def pages_key(data_type: str) -> dg.AssetKey:
    return dg.AssetKey(["shopify", f"{data_type}_pages"])


def table_key(data_type: str) -> dg.AssetKey:
    return dg.AssetKey(["dynamodb", data_type])


def step_key(key: dg.AssetKey) -> str:
    """The op (and step) name of an asset: its key path joined with `__`."""
    return key.to_python_identifier()


def sync_run_config(sync_type: str, data_types: tuple[str, ...] = DATA_TYPES) -> dict:
    """Run config giving every asset of `data_types` the same sync type."""
    keys = [key for d in data_types for key in (pages_key(d), table_key(d))]
    return {"ops": {step_key(key): {"config": {"sync_type": sync_type}} for key in keys}}


@contextlib.contextmanager
def permanent_errors_fail_at_once() -> Iterator[None]:
    """Turn a PermanentError (bad token, frozen shop, bad setting) into a Failure the RetryPolicy skips."""
    try:
        yield
    except PermanentError as error:
        raise dg.Failure(
            description=str(error), allow_retries=False,
            metadata={"error": type(error).__name__, "reason": getattr(error, "reason", "permanent")},
        ) from error


def last_try(context: dg.AssetExecutionContext) -> bool:
    """Whether the RetryPolicy will not try this step again."""
    return context.retry_number >= RETRY_POLICY.max_retries


@contextlib.contextmanager
def errors_as_failures(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Permanent errors fail at once; a transient one on the last try fails with its own words first
    (not Dagster's "Exceeded max_retries" above a stack trace)."""
    with permanent_errors_fail_at_once():
        try:
            yield
        except LeaseHeldError as error:
            if last_try(context):
                raise dg.Failure(description=str(error), allow_retries=False,
                                 metadata={"error": type(error).__name__, "reason": "lease_held"}) from error
            # The policy's 1-2-4 s would give up before a crashed holder's lease expires: wait for the expiry.
            raise dg.RetryRequested(max_retries=RETRY_POLICY.max_retries,
                                    seconds_to_wait=min(error.expires_in + 1.0, 120.0)) from error
        except TransientError as error:
            if not last_try(context):
                raise
            raise dg.Failure(
                description=f"{error} (gave up after {context.retry_number + 1} tries; materialize this "
                "partition again once the cause is gone: it resumes where this run stopped)",
                allow_retries=False, metadata={"error": type(error).__name__, "reason": "transient"},
            ) from error


def serialized(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, one message at a time (the engine reports progress from its fetch threads)."""
    lock = threading.Lock()

    def progress(message: str) -> None:
        with lock:
            log(message)

    return progress


@contextlib.contextmanager
def engine_logs_to_run(context: dg.AssetExecutionContext) -> Iterator[None]:
    """The engine's and client's own log lines (retries and their reasons, 429 waits, scope warnings) in
    the run's event log, at most one line of a kind per 5 s."""
    warn, info = serialized(context.log.warning), serialized(context.log.info)
    with forward_logs(lambda level, message: (warn if level >= logging.WARNING else info)(message)):
        yield


def fetch_metadata(result: FetchResult) -> dict[str, dg.MetadataValue]:
    """What the fetch did: the sync's totals so far, and what this run did (`*_this_run`)."""
    metadata = {
        "sync_type": dg.MetadataValue.text(result.sync_type),
        "pages": dg.MetadataValue.int(result.pages),
        "records": dg.MetadataValue.int(result.records),
        "pages_this_run": dg.MetadataValue.int(result.pages_this_run),
        "records_this_run": dg.MetadataValue.int(result.records_this_run),
        "failed_pages": dg.MetadataValue.int(len(result.failed_pages)),
        "requests_this_run": dg.MetadataValue.int(result.requests),
        "retries_this_run": dg.MetadataValue.int(result.retries),
        "throttled_this_run": dg.MetadataValue.int(result.throttled),
        "throttle_wait_seconds_this_run": dg.MetadataValue.float(round(result.throttle_wait_seconds, 3)),
        "resumed": dg.MetadataValue.bool(result.resumed),
        "only_recent_orders": dg.MetadataValue.bool(result.only_recent_orders),
        "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "records_per_second": dg.MetadataValue.float(_rate(result.records_this_run, result.seconds)),
    }
    if result.failed_pages:
        table = pd.DataFrame(result.failed_pages).to_markdown(index=False)
        metadata["failed_pages_detail"] = dg.MetadataValue.md(table)
    return metadata


def load_metadata(result: LoadResult, data_type: str, table: str, row_count: int) -> dict[str, dg.MetadataValue]:
    """What the load did this run, and what the table holds for the user now (`dagster/row_count`)."""
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(row_count),
        "dagster/table_name": dg.MetadataValue.text(table),
        "sync_type": dg.MetadataValue.text(result.sync_type),
        "pages_loaded_this_run": dg.MetadataValue.int(result.pages),
        "records_written_this_run": dg.MetadataValue.int(result.records_written),
        "deleted_this_run": dg.MetadataValue.int(result.deleted),
        "failed_batches": dg.MetadataValue.int(len(result.still_failed)),
        "retried_batches_this_run": dg.MetadataValue.int(result.retried_batches),
        "finished": dg.MetadataValue.bool(result.finished),
        "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "records_per_second": dg.MetadataValue.float(_rate(result.records_written, result.seconds)),
        "preview": dg.MetadataValue.md(preview_table(result.preview, data_type)),
    }
    if result.nothing_to_load:
        metadata["note"] = dg.MetadataValue.text(
            f"nothing to load: no sync of {data_type} was in progress; the table holds {row_count} of the user's "
            f"{data_type}")
    if result.failed_batches:
        metadata["failed_batches_detail"] = dg.MetadataValue.md(
            pd.DataFrame(result.failed_batches).to_markdown(index=False))
    return metadata


def preview_table(documents: list[dict], data_type: str) -> str:
    """A markdown table of a few loaded records: id, their name/title/email, updated_at."""
    name = _PREVIEW_NAME[data_type]
    if not documents:
        return "_nothing loaded in this run_"
    rows = [{"id": _key(doc), name: doc.get(name), "updated_at": updated_at(doc)} for doc in documents]
    return pd.DataFrame(rows).to_markdown(index=False)


def _key(doc: dict) -> int | str | None:
    """The numeric id of a REST or GraphQL document (what keys its item), or whatever its id is."""
    try:
        return record_key(doc)
    except CodecError:
        return doc.get("id")


def _rate(records: int, seconds: float) -> float:
    return round(records / seconds, 1) if seconds > 0 else 0.0


def _failed_pages_check(result: FetchResult) -> dg.AssetCheckResult:
    problems = [*result.failed_pages, *result.bad_records]
    return dg.AssetCheckResult(
        check_name="no_failed_pages", passed=not problems,
        metadata={"failed_pages": dg.MetadataValue.int(len(result.failed_pages)),
                  "bad_records": dg.MetadataValue.int(len(result.bad_records)),
                  "detail": dg.MetadataValue.json(problems)},
    )


def _failed_batches_check(result: LoadResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="no_failed_batches", passed=not result.still_failed,
        metadata={"failed_batches": dg.MetadataValue.int(len(result.still_failed)),
                  "ranges": dg.MetadataValue.json(result.still_failed)},
    )


def build_sync_assets(data_type: str) -> list[dg.AssetsDefinition]:
    """`shopify/{data_type}_pages` and `dynamodb/{data_type}`, partitioned by user, each with its check."""

    @dg.asset(
        key=pages_key(data_type),
        partitions_def=user_partitions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"shopify", "python"},
        pool=SHOPIFY_API_POOL,
        retry_policy=RETRY_POLICY,
        check_specs=[dg.AssetCheckSpec(
            "no_failed_pages", asset=pages_key(data_type), partitions_def=user_partitions,
            description=f"Every page of the user's {data_type} sync was fetched and every record is usable.")],
        description=f"The user's Shopify {data_type}, fetched page by page and staged in DynamoDB with a "
        "checkpoint after each page. A re-run fetches only the pages still missing.",
    )
    def fetch_pages(context: dg.AssetExecutionContext, config: SyncConfig,
                    sync_engine: SyncEngineResource) -> Iterator:
        user = context.partition_key
        with errors_as_failures(context), engine_logs_to_run(context):
            result = sync_engine.engine().fetch(user, config.sync_type, data_type, serialized(context.log.info))
        metadata = fetch_metadata(result)
        yield _failed_pages_check(result)
        if result.failed_pages:
            # Raised after every other slice finished, so a retry or backfill fetches only these pages.
            pages = ", ".join(f"slice {p['slice']} page {p['page']}: {p['error']}" for p in result.failed_pages)
            raise dg.Failure(
                description=f"{len(result.failed_pages)} page(s) of {data_type} failed after retries ({pages}). "
                "Materialize this partition again (or backfill its failed partitions, no config needed) to fetch "
                "only those pages.",
                metadata=metadata, allow_retries=not last_try(context),
            )
        yield dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=table_key(data_type),
        deps=[pages_key(data_type)],
        partitions_def=user_partitions,
        group_name=GROUP,
        owners=OWNERS,
        kinds={"dynamodb", "python"},
        retry_policy=RETRY_POLICY,
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=FRESHNESS),
        check_specs=[dg.AssetCheckSpec(
            "no_failed_batches", asset=table_key(data_type), partitions_def=user_partitions,
            description=f"No batch of the user's {data_type} is waiting in the failed-batch store.")],
        description=f"The user's {data_type} in DynamoDB, written from the staged pages in batches of 25. "
        "When nothing failed the sync finishes: high-water mark saved, checkpoint and pages cleared.",
    )
    def load_pages(context: dg.AssetExecutionContext, config: SyncConfig,
                   sync_engine: SyncEngineResource) -> Iterator:
        user = context.partition_key
        engine = sync_engine.engine()
        with errors_as_failures(context), engine_logs_to_run(context):
            result = engine.load(user, config.sync_type, data_type, serialized(context.log.info))
            records = RecordTable(engine.dynamodb, engine.settings, data_type)
            metadata = load_metadata(result, data_type, engine.settings.tables.records(data_type),
                                     records.count(user))
        yield _failed_batches_check(result)
        if result.still_failed:
            ranges = ", ".join(result.still_failed[:10])
            raise dg.Failure(
                description=f"{len(result.still_failed)} batch(es) of {data_type} failed to write ({ranges}); "
                "they are saved: a retry of this step, or the retry_failed_batches job, writes them again.",
                metadata=metadata, allow_retries=not last_try(context),
            )
        yield dg.MaterializeResult(metadata=metadata)

    return [fetch_pages, load_pages]


# Partitioned asset checks are a preview feature in Dagster 1.13; per-user results need them.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    sync_assets = [asset for data_type in DATA_TYPES for asset in build_sync_assets(data_type)]
