"""The daily sync: one run per user partition, each with its own run key for the day."""

import os
from collections.abc import Mapping
from datetime import datetime, timezone

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from shopify_pipeline.defs.assets import sync_run_config
from shopify_pipeline.defs.jobs import daily_sync_job
from shopify_pipeline.defs.partitions import user_partitions, user_run_tags
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.settings import SettingsError

DAILY_CRON_VARIABLE = "SHOPIFY_DAILY_SYNC_CRON"
DEFAULT_DAILY_CRON = "0 3 * * *"


def daily_cron(environ: Mapping[str, str] | None = None) -> str:
    """When the daily sync runs (UTC): `SHOPIFY_DAILY_SYNC_CRON`, default 03:00 every day. SettingsError names
    a value that is not a five-field cron string."""
    cron = (os.environ if environ is None else environ).get(DAILY_CRON_VARIABLE) or DEFAULT_DAILY_CRON
    if not is_valid_cron_string(cron):
        raise SettingsError(f"{DAILY_CRON_VARIABLE}={cron!r} is not a cron string: use five fields, e.g. "
                            f"{DEFAULT_DAILY_CRON!r} (03:00 UTC every day)")
    return cron


@dg.schedule(
    job=daily_sync_job,
    cron_schedule=daily_cron(),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"A daily sync (changes only) of every connected user, on `{daily_cron()}` UTC "
    f"(default every day at 03:00; {DAILY_CRON_VARIABLE}).",
)
def daily_sync_schedule(context: dg.ScheduleEvaluationContext, sync_engine: SyncEngineResource):
    """One RunRequest per user partition; the run key (user, day) makes a re-evaluation launch nothing twice.
    A user whose merchant uninstalled the app (an `app/uninstalled` webhook) is skipped until reconnected."""
    users = context.instance.get_dynamic_partitions(user_partitions.name)
    if not users:
        return dg.SkipReason("no users yet: the shopify_connections sensor adds them")
    connections = {c.user_id: c for c in sync_engine.engine().connections.list()}
    disconnected = {user for user, c in connections.items() if c.disconnected_at}
    if disconnected & set(users):
        context.log.info("skipping %d disconnected user(s) (app uninstalled): %s", len(disconnected & set(users)),
                         ", ".join(sorted(disconnected & set(users))[:10]))
    users = [user for user in users if user not in disconnected]
    if not users:
        return dg.SkipReason("every user is disconnected (app uninstalled)")
    day = (context.scheduled_execution_time or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
    return [
        dg.RunRequest(run_key=f"daily:{user}:{day}", partition_key=user, run_config=sync_run_config("daily"),
                      tags=user_run_tags(user, connections.get(user)))
        for user in users
    ]
