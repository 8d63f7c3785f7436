"""Two assets per data type: `shopify_{type}_pages` (fetch and stage) → `dynamodb_{type}` (load).

Assets are thin: read the partition (a user id) and the sync type, call the engine, log progress, return
metadata. Nothing large passes through an IO manager; the staged pages live in DynamoDB.
"""

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from shopify_pipeline.defs.partitions import user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.errors import PermanentError
from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.sync.engine import FetchResult, LoadResult

GROUP = "shopify_sync"
# Steps that call Shopify share this pool; its limit (dagster.yaml) caps concurrent fetches across runs.
SHOPIFY_API_POOL = "shopify_api"
# Transient failures (a page that failed after the client's own retries, DynamoDB throttling, a held
# lease) are tried again with exponential backoff and jitter; a retry fetches only the failed pages.
RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

SyncType = Literal["initial", "manual", "daily"]  # settings.SYNC_TYPES, as a type the launchpad checks
DataType = Literal["orders", "products", "customers"]  # settings.DATA_TYPES
# The column that names a record in a preview, per data type.
_PREVIEW_NAME = {"orders": "name", "products": "title", "customers": "email"}


class SyncConfig(dg.Config):
    """Which sync this run is: a UI click is a manual sync unless told otherwise."""

    sync_type: SyncType = Field(
        default="manual", description="initial (first full copy), manual (a full re-sync) or daily (changes only)"
    )


def pages_key(data_type: str) -> dg.AssetKey:
    return dg.AssetKey(f"shopify_{data_type}_pages")


def table_key(data_type: str) -> dg.AssetKey:
    return dg.AssetKey(f"dynamodb_{data_type}")


def sync_run_config(sync_type: str, data_types: tuple[str, ...] = DATA_TYPES) -> dict:
    """Run config giving every asset of `data_types` the same sync type."""
    keys = [key for d in data_types for key in (pages_key(d), table_key(d))]
    return {"ops": {key.to_user_string(): {"config": {"sync_type": sync_type}} for key in keys}}


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


def serialized(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, one message at a time (the engine reports progress from its fetch threads)."""
    lock = threading.Lock()

    def progress(message: str) -> None:
        with lock:
            log(message)

    return progress


def fetch_metadata(result: FetchResult) -> dict[str, dg.MetadataValue]:
    metadata = {
        "pages": dg.MetadataValue.int(result.pages),
        "records": dg.MetadataValue.int(result.records),
        "pages_this_run": dg.MetadataValue.int(result.pages_this_run),
        "records_this_run": dg.MetadataValue.int(result.records_this_run),
        "failed_pages": dg.MetadataValue.int(len(result.failed_pages)),
        "requests": dg.MetadataValue.int(result.requests),
        "retries": dg.MetadataValue.int(result.retries),
        "throttled_429": dg.MetadataValue.int(result.throttled),
        "throttle_wait_seconds": dg.MetadataValue.float(round(result.throttle_wait_seconds, 3)),
        "resumed": dg.MetadataValue.bool(result.resumed),
        "only_recent_orders": dg.MetadataValue.bool(result.only_recent_orders),
        "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "records_per_second": dg.MetadataValue.float(_rate(result.records_this_run, result.seconds)),
    }
    if result.failed_pages:
        table = pd.DataFrame(result.failed_pages).to_markdown(index=False)
        metadata["failed_pages_detail"] = dg.MetadataValue.md(table)
    return metadata


def load_metadata(result: LoadResult, data_type: str) -> dict[str, dg.MetadataValue]:
    metadata = {
        "pages": dg.MetadataValue.int(result.pages),
        "records": dg.MetadataValue.int(result.records_written),
        "failed_batches": dg.MetadataValue.int(len(result.failed_batches)),
        "retried_batches": dg.MetadataValue.int(result.retried_batches),
        "finished": dg.MetadataValue.bool(result.finished),
        "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "records_per_second": dg.MetadataValue.float(_rate(result.records_written, result.seconds)),
        "preview": dg.MetadataValue.md(preview_table(result.preview, data_type)),
    }
    if result.failed_batches:
        metadata["failed_batches_detail"] = dg.MetadataValue.md(
            pd.DataFrame(result.failed_batches).to_markdown(index=False))
    return metadata


def preview_table(documents: list[dict], data_type: str) -> str:
    """A markdown table of a few loaded records: id, their name/title/email, updated_at."""
    name = _PREVIEW_NAME[data_type]
    if not documents:
        return "_nothing loaded in this run_"
    rows = [{"id": doc.get("id"), name: doc.get(name), "updated_at": doc.get("updated_at")} for doc in documents]
    return pd.DataFrame(rows).to_markdown(index=False)


def _rate(records: int, seconds: float) -> float:
    return round(records / seconds, 1) if seconds > 0 else 0.0


def build_sync_assets(data_type: str) -> list[dg.AssetsDefinition]:
    """`shopify_{data_type}_pages` and `dynamodb_{data_type}`, partitioned by user."""

    @dg.asset(
        key=pages_key(data_type),
        partitions_def=user_partitions,
        group_name=GROUP,
        kinds={"shopify"},
        pool=SHOPIFY_API_POOL,
        retry_policy=RETRY_POLICY,
        description=f"The user's Shopify {data_type}, fetched page by page and staged in DynamoDB with a "
        "checkpoint after each page. A re-run fetches only the pages still missing.",
    )
    def fetch_pages(context: dg.AssetExecutionContext, config: SyncConfig,
                    sync_engine: SyncEngineResource) -> dg.MaterializeResult:
        user = context.partition_key
        with permanent_errors_fail_at_once():
            result = sync_engine.engine().fetch(user, config.sync_type, data_type, serialized(context.log.info))
        metadata = fetch_metadata(result)
        if result.failed_pages:
            # Raised after every other slice finished, so a retry or backfill fetches only these pages.
            pages = ", ".join(f"slice {p['slice']} page {p['page']}: {p['error']}" for p in result.failed_pages)
            raise dg.Failure(
                description=f"{len(result.failed_pages)} page(s) of {data_type} failed after retries ({pages}). "
                "Materialize this partition again to fetch only those pages.",
                metadata=metadata,
            )
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=table_key(data_type),
        deps=[pages_key(data_type)],
        partitions_def=user_partitions,
        group_name=GROUP,
        kinds={"dynamodb"},
        retry_policy=RETRY_POLICY,
        description=f"The user's {data_type} in DynamoDB, written from the staged pages in batches of 25. "
        "When nothing failed the sync finishes: high-water mark saved, checkpoint and pages cleared.",
    )
    def load_pages(context: dg.AssetExecutionContext, config: SyncConfig,
                   sync_engine: SyncEngineResource) -> dg.MaterializeResult:
        user = context.partition_key
        with permanent_errors_fail_at_once():
            result = sync_engine.engine().load(user, config.sync_type, data_type, context.log.info)
        metadata = load_metadata(result, data_type)
        if result.failed_batches:
            ranges = ", ".join(b["range"] for b in result.failed_batches[:10])
            raise dg.Failure(
                description=f"{len(result.failed_batches)} batch(es) of {data_type} failed to write ({ranges}); "
                "they are saved: a retry of this step, or the retry_failed_batches job, writes them again.",
                metadata=metadata,
            )
        return dg.MaterializeResult(metadata=metadata)

    return [fetch_pages, load_pages]


sync_assets = [asset for data_type in DATA_TYPES for asset in build_sync_assets(data_type)]
