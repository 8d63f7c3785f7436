"""Asset checks per data type: no failed pages, no failed batches, DynamoDB's count equals Shopify's."""

import warnings

import dagster as dg

from shopify_pipeline.defs.assets import pages_key, permanent_errors_fail_at_once, table_key
from shopify_pipeline.defs.partitions import user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.settings import DATA_TYPES, SYNC_TYPES


def build_sync_checks(data_type: str) -> list[dg.AssetChecksDefinition]:
    """The three checks of one data type, partitioned by user like the assets."""

    @dg.asset_check(asset=pages_key(data_type), name="no_failed_pages", partitions_def=user_partitions,
                    description=f"No page of {data_type} is waiting to be fetched again, in any sync type.")
    def no_failed_pages(context: dg.AssetCheckExecutionContext,
                        sync_engine: SyncEngineResource) -> dg.AssetCheckResult:
        engine, user = sync_engine.engine(), context.partition_key
        failed = []
        with permanent_errors_fail_at_once():
            for sync_type in SYNC_TYPES:
                checkpoint = engine.state.load_checkpoint(user, sync_type, data_type)
                slices = checkpoint.state.get("slices", []) if checkpoint else []
                failed += [{"sync_type": sync_type, "slice": s["i"], **s["failed"]} for s in slices if s.get("failed")]
        return dg.AssetCheckResult(
            passed=not failed,
            metadata={"failed_pages": dg.MetadataValue.int(len(failed)),
                      "detail": dg.MetadataValue.json(failed)},
        )

    @dg.asset_check(asset=table_key(data_type), name="no_failed_batches", partitions_def=user_partitions,
                    description=f"No batch of {data_type} is waiting in the failed-batch store, in any sync type.")
    def no_failed_batches(context: dg.AssetCheckExecutionContext,
                          sync_engine: SyncEngineResource) -> dg.AssetCheckResult:
        engine, user = sync_engine.engine(), context.partition_key
        with permanent_errors_fail_at_once():
            batches = {st: engine.state.failed_batches(user, st, data_type) for st in SYNC_TYPES}
        ranges = {st: [b["range"] for b in entries] for st, entries in batches.items() if entries}
        count = sum(len(entries) for entries in batches.values())
        return dg.AssetCheckResult(
            passed=count == 0,
            metadata={"failed_batches": dg.MetadataValue.int(count), "ranges": dg.MetadataValue.json(ranges)},
        )

    @dg.asset_check(asset=table_key(data_type), name="record_count_matches_shopify", partitions_def=user_partitions,
                    description=f"The user's {data_type} in DynamoDB number exactly what Shopify's count.json "
                    "says (warns only: the shop may change between the sync and the check).")
    def record_count_matches_shopify(context: dg.AssetCheckExecutionContext,
                                     sync_engine: SyncEngineResource) -> dg.AssetCheckResult:
        engine, user = sync_engine.engine(), context.partition_key
        with permanent_errors_fail_at_once():
            stored = RecordTable(engine.dynamodb, engine.settings, data_type).count(user)
            client = engine.shopify_client(engine.connections.get(user))
            try:
                in_shopify = client.count(data_type)
            finally:
                client.close()
        return dg.AssetCheckResult(
            passed=stored == in_shopify,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"dynamodb": dg.MetadataValue.int(stored), "shopify": dg.MetadataValue.int(in_shopify),
                      "difference": dg.MetadataValue.int(stored - in_shopify)},
        )

    return [no_failed_pages, no_failed_batches, record_count_matches_shopify]


# Partitioned asset checks are a preview feature in Dagster 1.13; per-user results need them.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    sync_checks = [check for data_type in DATA_TYPES for check in build_sync_checks(data_type)]
