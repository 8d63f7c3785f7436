"""Jobs: a full sync and a daily sync of every data type, and the seed's manual retry of failed batches."""

from typing import Literal

import dagster as dg
from pydantic import Field

from shopify_pipeline.defs.assets import GROUP, permanent_errors_fail_at_once, sync_run_config, table_key
from shopify_pipeline.defs.partitions import user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.sync.service import SyncService

_SYNC_ASSETS = dg.AssetSelection.groups(GROUP)

full_sync_job = dg.define_asset_job(
    "full_sync",
    selection=_SYNC_ASSETS,
    partitions_def=user_partitions,
    config=sync_run_config("manual"),
    description="Fetch and load every data type of one user: a full re-sync (manual) unless the run config's "
    "sync_type says otherwise (auto, initial, manual or daily).",
)

daily_sync_job = dg.define_asset_job(
    "daily_sync",
    selection=_SYNC_ASSETS,
    partitions_def=user_partitions,
    config=sync_run_config("daily"),
    description="What changed since the last sync (high-water mark minus a look-back), for one user.",
)


class RetryFailedBatchesConfig(dg.Config):
    data_type: Literal["all", "orders", "products", "customers"] = Field(
        default="all", description="orders, products or customers; all (default): every data type of the user.")


@dg.op(description="Write the saved failed batches of the run's user again, whatever sync saved them; a sync "
       "whose fetch was complete is finished too.")
def retry_failed_batches(context: dg.OpExecutionContext, config: RetryFailedBatchesConfig,
                         sync_engine: SyncEngineResource) -> None:
    user = context.partition_key
    service = SyncService(sync_engine.engine())
    still_failed = 0
    for data_type in DATA_TYPES if config.data_type == "all" else [config.data_type]:
        with permanent_errors_fail_at_once():
            result = service.retry_failed_batches(user, None, data_type)
        still_failed += result.still_failed
        metadata = {"retried": dg.MetadataValue.int(result.retried),
                    "still_failed": dg.MetadataValue.int(result.still_failed)}
        context.log.info(f"{user} {data_type}: retried {result.retried} batch(es), {result.still_failed} still failing")
        context.log_event(dg.AssetObservation(asset_key=table_key(data_type), partition=user, metadata=metadata))
    if still_failed:
        raise dg.Failure(
            description=f"{still_failed} failed batch(es) of {user} still fail to write; see the run log, fix the "
            "cause (throttling, item size, permissions) and run this job again.",
        )


@dg.job(partitions_def=user_partitions,
        description="The seed's manual retry: write a user's saved failed batches again. Pick the user's partition; "
        "the sync type is found by itself. Fails if any batch still fails.")
def retry_failed_batches_job() -> None:
    retry_failed_batches()
