"""One partition per connected user: its key is the user id (see `check_user_id` for what is allowed)."""

import dagster as dg

USER_PARTITIONS_NAME = "shopify_users"

user_partitions = dg.DynamicPartitionsDefinition(name=USER_PARTITIONS_NAME)

# Every run that syncs a user carries this tag; dagster.yaml allows one such run per user at a time.
USER_TAG = "shopify/user"
