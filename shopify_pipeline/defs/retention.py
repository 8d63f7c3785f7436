"""Retention of uninstalled shops' data: a daily job that erases what `shop/redact` should have (issue #15).

`app/uninstalled` marks a connection disconnected and keeps its data; Shopify's `shop/redact`, sent 48 hours
later, erases it. Should that webhook never arrive, this job erases (as shop/redact would) every shop that
uninstalled the app SHOPIFY_UNINSTALLED_RETENTION_DAYS (default 30) or more days ago. `none` turns it off.
"""

import dagster as dg

from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.webhooks.compliance import Compliance, uninstalled_retention_days


@dg.op(description="Erase the data of every shop that uninstalled the app SHOPIFY_UNINSTALLED_RETENTION_DAYS "
       "(default 30) or more days ago, as shop/redact would; fails if a shop could not be erased (a sync of it "
       "was running: the next run tries again).")
def purge_uninstalled(context: dg.OpExecutionContext, sync_engine: SyncEngineResource) -> None:
    days = uninstalled_retention_days()
    if days is None:
        context.log.info("SHOPIFY_UNINSTALLED_RETENTION_DAYS=none: uninstalled shops are kept until shop/redact")
        return
    outcome = Compliance(sync_engine.engine()).purge_uninstalled(days)
    erased = sorted(user for user, done in outcome.items() if "erased" in done)
    context.log.info(f"{len(erased)} uninstalled shop(s) erased after {days} days: {', '.join(erased) or 'none'}")
    for user, done in sorted(outcome.items()):
        if "kept" in done:
            context.log.info(f"{user} kept: {done['kept']}")
    left = {user: done["failed"] for user, done in outcome.items() if "failed" in done}
    if left:
        raise dg.Failure(description=f"{len(left)} uninstalled shop(s) not erased yet: "
                         + "; ".join(f"{user}: {why}" for user, why in sorted(left.items())[:10]))


@dg.job(description="Erase the data of shops that uninstalled the app longer ago than the retention "
        "(SHOPIFY_UNINSTALLED_RETENTION_DAYS, default 30 days): the backstop for a shop/redact that never came.")
def purge_uninstalled_job() -> None:
    purge_uninstalled()


purge_uninstalled_schedule = dg.ScheduleDefinition(
    job=purge_uninstalled_job, cron_schedule="30 4 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 04:30 UTC: erase the shops uninstalled longer ago than the retention.")
