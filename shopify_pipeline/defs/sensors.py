"""Keeps the user partitions in step with `shopify_connections` and starts each new user's initial sync."""

import dagster as dg

from shopify_pipeline.defs.assets import sync_run_config
from shopify_pipeline.defs.jobs import full_sync_job
from shopify_pipeline.defs.partitions import USER_TAG, user_partitions
from shopify_pipeline.defs.resources import SyncEngineResource


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
                          run_config=sync_run_config("initial"), tags={USER_TAG: user})
            for user in new
        ],
        dynamic_partitions_requests=requests,
    )
