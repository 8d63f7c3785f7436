"""The one Dagster `Definitions` of this code location (see docs/dagster.md)."""

import dagster as dg

from shopify_pipeline.defs.assets import sync_assets
from shopify_pipeline.defs.checks import sync_checks
from shopify_pipeline.defs.jobs import daily_sync_job, full_sync_job, retry_failed_batches_job
from shopify_pipeline.defs.resources import resources_from_env
from shopify_pipeline.defs.schedules import daily_sync_schedule
from shopify_pipeline.defs.sensors import shopify_connections_sensor

defs = dg.Definitions(
    assets=sync_assets,
    asset_checks=sync_checks,
    jobs=[full_sync_job, daily_sync_job, retry_failed_batches_job],
    schedules=[daily_sync_schedule],
    sensors=[shopify_connections_sensor],
    resources=resources_from_env(),
    # One process per run: the engine's Shopify pacer is shared per shop within a process, so steps in
    # separate processes would each spend the same shop's API budget; slices already fetch in parallel.
    executor=dg.in_process_executor,
)
