"""Asset checks that run after a user's load: DynamoDB's count equals Shopify's, and the user is fresh.

`no_failed_pages` and `no_failed_batches` are reported by the assets themselves (assets.py), so that the
run in which something failed shows the failed check.
"""

import warnings
from datetime import datetime, timezone

import dagster as dg

from shopify_pipeline.defs.assets import FRESHNESS, permanent_errors_fail_at_once, table_key
from shopify_pipeline.defs.partitions import user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.settings import DATA_TYPES
from shopify_pipeline.webhooks.handler import WEBHOOK_STATUS


def build_sync_checks(data_type: str) -> list[dg.AssetChecksDefinition]:
    """The checks of one data type, partitioned by user like the assets."""

    @dg.asset_check(asset=table_key(data_type), name="record_count_matches_shopify", partitions_def=user_partitions,
                    description=f"The user's {data_type} in DynamoDB number exactly what Shopify's count "
                    "says through the user's API (warns only: the shop may change between the sync and the check).")
    def record_count_matches_shopify(context: dg.AssetCheckExecutionContext,
                                     sync_engine: SyncEngineResource) -> dg.AssetCheckResult:
        engine, user = sync_engine.engine(), context.partition_key
        with permanent_errors_fail_at_once():
            stored = RecordTable(engine.dynamodb, engine.settings, data_type).count(user)
            source = engine.page_source(engine.connections.get(user))  # the user's API: GraphQL or REST
            try:
                in_shopify = source.count(data_type)
                precision = source.count_precision.get(data_type, "EXACT")
            finally:
                source.close()
        return dg.AssetCheckResult(
            # A count Shopify stopped short of (AT_LEAST) is a floor, not the number to equal.
            passed=stored == in_shopify if precision == "EXACT" else stored >= in_shopify,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"dynamodb": dg.MetadataValue.int(stored), "shopify": dg.MetadataValue.int(in_shopify),
                      "shopify_precision": dg.MetadataValue.text(precision),
                      "difference": dg.MetadataValue.int(stored - in_shopify)},
        )

    @dg.asset_check(asset=table_key(data_type), name="synced_within_26h", partitions_def=user_partitions,
                    description=f"This user's {data_type} finished a sync within the last "
                    f"{FRESHNESS.total_seconds() / 3600:.0f} hours (the asset's freshness policy, per user).")
    def synced_within_26h(context: dg.AssetCheckExecutionContext,
                          sync_engine: SyncEngineResource) -> dg.AssetCheckResult:
        engine, user = sync_engine.engine(), context.partition_key
        with permanent_errors_fail_at_once():
            last_syncs = engine.connections.get(user).last_sync
        finished = [at for key, at in last_syncs.items() if key.endswith(f"_{data_type}")]
        last = max(finished) if finished else None
        age_hours = None
        if last:
            moment = datetime.fromisoformat(last.replace("Z", "+00:00"))
            age_hours = (datetime.now(timezone.utc) - moment).total_seconds() / 3600
        return dg.AssetCheckResult(
            passed=age_hours is not None and age_hours <= FRESHNESS.total_seconds() / 3600,
            metadata={"last_finished_sync": dg.MetadataValue.text(last or "never"),
                      "age_hours": dg.MetadataValue.float(round(age_hours, 2) if age_hours is not None else -1.0)},
        )

    @dg.asset_check(asset=table_key(data_type), name="webhooks_applied", partitions_def=user_partitions,
                    description=f"This user's {data_type} webhooks: none rejected or failed for good (see "
                    "`shopify-pipeline webhooks inbox`), and the lag of the last one applied (Shopify's trigger to "
                    "DynamoDB). Passes when the user gets no webhooks.")
    def webhooks_applied(context: dg.AssetCheckExecutionContext,
                         sync_engine: SyncEngineResource) -> dg.AssetCheckResult:
        engine, user = sync_engine.engine(), context.partition_key
        with permanent_errors_fail_at_once():
            item = engine.dynamodb.get_item(
                TableName=engine.settings.tables.checkpoints, ConsistentRead=True,
                Key={"userId": {"S": user}, "syncType": {"S": WEBHOOK_STATUS}}).get("Item") or {}
        counts = {result: int(item.get(f"{result}_{data_type}", {}).get("N", "0"))
                  for result in ("applied", "duplicate", "stale", "rejected", "failed")}
        lag = float(item.get(f"lagSeconds_{data_type}", {}).get("N", "-1"))
        return dg.AssetCheckResult(
            passed=counts["rejected"] == 0 and counts["failed"] == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**{f"events_{k}": dg.MetadataValue.int(v) for k, v in counts.items()},
                      "last_applied": dg.MetadataValue.text(item.get(f"lastApplied_{data_type}", {}).get("S", "never")),
                      "last_lag_seconds": dg.MetadataValue.float(lag)},
        )

    return [record_count_matches_shopify, synced_within_26h, webhooks_applied]


# Partitioned asset checks are a preview feature in Dagster 1.13; per-user results need them.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    sync_checks = [check for data_type in DATA_TYPES for check in build_sync_checks(data_type)]
