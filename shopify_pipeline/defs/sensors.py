"""Sensors: keep the user partitions in step with `shopify_connections` (and start each new user's initial
sync); record a failed run on the user's connection and tell the alert hook."""

import importlib
import os
from collections.abc import Callable

import dagster as dg

from shopify_pipeline.defs.assets import sync_run_config
from shopify_pipeline.defs.jobs import full_sync_job
from shopify_pipeline.defs.partitions import USER_TAG, user_partitions, user_run_tags
from shopify_pipeline.defs.resources import SyncEngineResource
from shopify_pipeline.settings import SettingsError


@dg.sensor(
    job=full_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new connection in shopify_connections and requests its initial "
    "sync; removes the partitions of users whose connection was deleted.",
)
def shopify_connections_sensor(context: dg.SensorEvaluationContext, sync_engine: SyncEngineResource):
    connections = {c.user_id: c for c in sync_engine.engine().connections.list()}
    known = set(context.instance.get_dynamic_partitions(user_partitions.name))
    new = sorted(set(connections) - known)
    gone = sorted(known - set(connections))
    if not new and not gone:
        return dg.SkipReason(f"{len(known)} user(s), no change in shopify_connections")
    requests = []
    if new:
        requests.append(user_partitions.build_add_request(new))
    if gone:
        requests.append(user_partitions.build_delete_request(gone))
    context.log.info(f"new users: {new or 'none'}; removed users: {gone or 'none'}")
    return dg.SensorResult(
        run_requests=[
            # The connection's creation time in the key: a user removed and connected again syncs again.
            dg.RunRequest(run_key=f"initial:{user}:{connections[user].created_at}", partition_key=user,
                          run_config=sync_run_config("initial"), tags=user_run_tags(user, connections[user]))
            for user in new
        ],
        dynamic_partitions_requests=requests,
    )


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When a run of a user's sync fails: writes the failure (run id, failed steps and their "
    "messages) to the user's connection, shown by `shopify-pipeline status`, and calls the alert hook named "
    "by SHOPIFY_PIPELINE_ALERT_HOOK (module:function) if set.",
)
def sync_failure_sensor(context: dg.RunFailureSensorContext, sync_engine: SyncEngineResource) -> None:
    run = context.dagster_run
    user = run.tags.get("dagster/partition") or run.tags.get(USER_TAG)
    if not user:
        return
    steps = [
        f"{event.step_key}: {_failure_text(event)}" for event in context.get_step_failure_events()
    ]
    failure = {"runId": run.run_id, "job": run.job_name, "steps": steps[:10],
               "message": steps[0] if steps else (context.failure_event.message or "the run failed")}
    engine = sync_engine.engine()
    if user in {c.user_id for c in engine.connections.list()}:
        engine.connections.record_run_failure(user, failure)
    hook = load_alert_hook(os.environ.get(ALERT_HOOK_VARIABLE, ""))
    if hook is not None:
        hook({"user": user, **failure})


def _failure_text(event: dg.DagsterEvent) -> str:
    data = event.step_failure_data
    if data and data.user_failure_data and data.user_failure_data.description:
        return data.user_failure_data.description[:500]
    if data and data.error:
        return data.error.message.strip()[:500]
    return event.message or "failed"


ALERT_HOOK_VARIABLE = "SHOPIFY_PIPELINE_ALERT_HOOK"


def load_alert_hook(reference: str) -> Callable[[dict], None] | None:
    """The function named by `module:function` (None when empty). It receives {user, runId, job, steps,
    message}; a token is never in it (failure texts never hold one)."""
    if not reference:
        return None
    module_name, _, function = reference.partition(":")
    if not module_name or not function:
        raise SettingsError(f"{ALERT_HOOK_VARIABLE}={reference!r}: use module:function, e.g. mycompany.alerts:notify")
    return getattr(importlib.import_module(module_name), function)
