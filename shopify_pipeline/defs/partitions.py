"""One partition per connected user: its key is the user id (see `check_user_id` for what is allowed)."""

import dagster as dg

from shopify_pipeline.dynamo.connections import Connection

USER_PARTITIONS_NAME = "shopify_users"

user_partitions = dg.DynamicPartitionsDefinition(name=USER_PARTITIONS_NAME)

# Every run that syncs a user carries this tag; dagster.yaml allows one such run per user at a time.
USER_TAG = "shopify/user"


def user_run_tags(user: str, connection: Connection | None) -> dict[str, str]:
    """The tags of a run the schedule or a sensor launches for `user`: USER_TAG, and the ECS task size set on
    its connection (`users task-size`) as the tags dagster-aws's EcsRunLauncher reads."""
    size = connection.task_size if connection else {}
    return {USER_TAG: user, **({"ecs/cpu": size["cpu"], "ecs/memory": size["memory"]} if size else {})}
