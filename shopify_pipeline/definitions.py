"""The one Dagster `Definitions` of this code location (see docs/dagster.md)."""

import os
import warnings
from pathlib import Path

import dagster as dg

from shopify_pipeline.defs.assets import sync_assets
from shopify_pipeline.defs.checks import sync_checks
from shopify_pipeline.defs.jobs import daily_sync_job, full_sync_job, retry_failed_batches_job
from shopify_pipeline.defs.resources import resources_from_env
from shopify_pipeline.defs.retention import purge_uninstalled_job, purge_uninstalled_schedule
from shopify_pipeline.defs.schedules import daily_sync_schedule
from shopify_pipeline.defs.sensors import shopify_connections_sensor, sync_failure_sensor


def with_code_references(assets: list) -> list:
    """Each asset links to its source: the local file, or the repository when SHOPIFY_PIPELINE_GIT_URL is set
    (e.g. https://github.com/acme/shopify_pipeline, branch from SHOPIFY_PIPELINE_GIT_BRANCH, default main)."""
    with warnings.catch_warnings():  # code references are a beta feature in Dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        referenced = dg.with_source_code_references(assets)
    git_url = os.environ.get("SHOPIFY_PIPELINE_GIT_URL")
    if not git_url:
        return list(referenced)
    return list(dg.link_code_references_to_git(
        referenced, git_url=git_url, git_branch=os.environ.get("SHOPIFY_PIPELINE_GIT_BRANCH", "main"),
        file_path_mapping=dg.AnchorBasedFilePathMapping(
            local_file_anchor=Path(__file__), file_anchor_path_in_repository="shopify_pipeline/definitions.py"),
    ))


defs = dg.Definitions(
    assets=with_code_references(sync_assets),
    asset_checks=sync_checks,
    jobs=[full_sync_job, daily_sync_job, retry_failed_batches_job, purge_uninstalled_job],
    schedules=[daily_sync_schedule, purge_uninstalled_schedule],
    sensors=[shopify_connections_sensor, sync_failure_sensor],
    resources=resources_from_env(),
    # One process per run: the engine's Shopify pacer is shared per shop within a process, so steps in
    # separate processes would each spend the same shop's API budget; slices already fetch in parallel.
    executor=dg.in_process_executor,
)
