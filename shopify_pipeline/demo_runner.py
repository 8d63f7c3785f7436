"""The demo's Dagster part: materialize one user's partition through the `full_sync` job, and summarize."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.state import StateStore
from shopify_pipeline.settings import DATA_TYPES, Settings


@dataclass
class UserOutcome:
    user_id: str
    run_id: str
    success: bool
    metadata: dict[str, dict[str, object]] = field(default_factory=dict)  # asset key -> metadata values
    errors: list[str] = field(default_factory=list)


def materialize_user(user_id: str, settings: Settings, sync_type: str = "initial") -> UserOutcome:
    """Run the full-sync job for one user partition on the instance in $DAGSTER_HOME."""
    from shopify_pipeline.definitions import defs
    from shopify_pipeline.defs.assets import sync_run_config
    from shopify_pipeline.defs.partitions import user_partitions

    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(user_partitions.name, [user_id])
    job = defs.resolve_job_def("full_sync")
    # Progress lines (INFO) on the console; Dagster's own DEBUG events stay in the run's event log.
    run_config = {**sync_run_config(sync_type), "loggers": {"console": {"config": {"log_level": "INFO"}}}}
    result = job.execute_in_process(
        run_config=run_config, partition_key=user_id, instance=instance, raise_on_error=False,
        tags={"shopify/user": user_id},
    )
    outcome = UserOutcome(user_id, result.run_id, result.success)
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            outcome.metadata[materialization.asset_key.to_user_string()] = {
                k: getattr(v, "value", v) for k, v in materialization.metadata.items()
            }
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            message = (event.step_failure_data.user_failure_data or None)
            text = message.description if message and message.description else (error.message if error else "")
            outcome.errors.append(f"{event.step_key}: {text.strip().splitlines()[0] if text else 'failed'}")
    return outcome


def summary_lines(outcomes: list[UserOutcome], settings: Settings) -> list[str]:
    """A per-user summary: records, pages, retries, 429s, failures, status, and where to look next."""
    from shopify_pipeline.defs.assets import pages_key, table_key

    state = StateStore(dynamodb_client(settings), settings)
    lines = ["Summary", "======="]
    for outcome in outcomes:
        status = state.get_status(outcome.user_id)
        lines.append(f"{outcome.user_id}: {'OK' if outcome.success else 'FAILED'}  (Dagster run {outcome.run_id[:8]})")
        for data_type in DATA_TYPES:
            pages = outcome.metadata.get(pages_key(data_type).to_user_string(), {})
            table = outcome.metadata.get(table_key(data_type).to_user_string(), {})
            current = status.get(data_type, {})
            lines.append(
                f"  {data_type:10} {_n(table, 'records_written_this_run'):>6} records written  "
                f"{_n(pages, 'pages'):>4} pages  "
                f"{_n(pages, 'retries_this_run'):>3} retries  "
                f"{_n(pages, 'throttled_this_run'):>3} throttled waited out  "
                f"{_n(pages, 'failed_pages'):>2} failed pages  {_n(table, 'failed_batches'):>2} failed batches  "
                f"status: {current.get('status', '-')}"
            )
        for error in outcome.errors[:3]:
            lines.append(f"  ✗ {error}")
        if not outcome.success:
            lines.append(f"  next: `shopify-pipeline status --user {outcome.user_id}`; docs/runbook.md says what to do")
    lines.append("")
    lines.append("Look next: `make ui` (Dagster UI on this state), `shopify-pipeline status --user alice`,")
    lines.append("`shopify-pipeline failed-batches --data-type orders`.")
    return lines


def _n(metadata: dict, key: str) -> str:
    value = metadata.get(key)
    return "-" if value is None else str(value)
