"""Jobs: a full sync and a daily sync of every data type, and the seed's manual retry of failed batches."""

import dagster as dg
from pydantic import Field

from shopify_pipeline.defs.assets import (
    GROUP,
    DataType,
    SyncType,
    permanent_errors_fail_at_once,
    sync_run_config,
    table_key,
)
from shopify_pipeline.defs.partitions import user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource

_SYNC_ASSETS = dg.AssetSelection.groups(GROUP)

full_sync_job = dg.define_asset_job(
    "full_sync",
    selection=_SYNC_ASSETS,
    partitions_def=user_partitions,
    config=sync_run_config("manual"),
    description="Fetch and load every data type of one user; the run config's sync_type says which sync "
    "(initial, manual or daily; manual by default).",
)

daily_sync_job = dg.define_asset_job(
    "daily_sync",
    selection=_SYNC_ASSETS,
    partitions_def=user_partitions,
    config=sync_run_config("daily"),
    description="What changed since the last sync (high-water mark minus a look-back), for one user.",
)


class RetryFailedBatchesConfig(dg.Config):
    user_id: str = Field(description="The user whose saved failed batches are written again.")
    sync_type: SyncType = Field(default="manual", description="The sync that saved them.")
    data_type: DataType = Field(description="orders, products or customers.")


@dg.op(description="Write the saved failed batches of one (user, sync type, data type) again.")
def retry_failed_batches(context: dg.OpExecutionContext, config: RetryFailedBatchesConfig,
                         sync_engine: SyncEngineResource) -> None:
    with permanent_errors_fail_at_once():
        result = sync_engine.engine().retry_failed_batches(config.user_id, config.sync_type, config.data_type)
    metadata = {"retried": dg.MetadataValue.int(result.retried),
                "still_failed": dg.MetadataValue.int(result.still_failed)}
    context.log.info(f"{config.user_id} {config.sync_type} {config.data_type}: retried {result.retried} "
                     f"batch(es), {result.still_failed} still failing")
    partitions = context.instance.get_dynamic_partitions(user_partitions.name)
    context.log_event(dg.AssetObservation(
        asset_key=table_key(config.data_type),
        partition=config.user_id if config.user_id in partitions else None,
        metadata=metadata,
    ))
    if result.still_failed:
        raise dg.Failure(
            description=f"{result.still_failed} of {result.retried} failed batch(es) still fail to write; "
            "see the run log, fix the cause (throttling, item size, permissions) and run this job again.",
            metadata=metadata,
        )


@dg.job(description="The seed's manual retry: write a user's saved failed batches again (config: user_id, "
        "sync_type, data_type). Fails if any batch still fails.")
def retry_failed_batches_job() -> None:
    retry_failed_batches()
