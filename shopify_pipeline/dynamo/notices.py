"""Notices of bulk operations that ended, from Shopify's `bulk_operations/finish` webhook (issue #15).

The webhook handler records one per user and operation (`bulk_finished_{operation number}` in
`sync_checkpoints`, TTL 7 days); a sync waiting on that operation looks for it every second between its polls
of Shopify, so it reads the result about a second after the operation ends instead of at its next poll (up to
30 s later), and asks Shopify no more often. Without webhooks nothing is recorded and the polls go on as before.
"""

from __future__ import annotations

import time

from shopify_pipeline.dynamo.client import translate_errors

PREFIX = "bulk_finished_"
KEEP_SECONDS = 7 * 86_400


class BulkFinishNotices:
    """The notices of one user's bulk operations in the checkpoints table."""

    def __init__(self, dynamodb, table: str, user_id: str) -> None:
        self.dynamodb, self.table, self.user_id = dynamodb, table, user_id

    def record(self, operation_id: str, status: str) -> None:
        """Operation `operation_id` (gid://shopify/BulkOperation/N) ended with `status` (completed, failed, …)."""
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            self.dynamodb.put_item(TableName=self.table, Item={
                "userId": {"S": self.user_id}, "syncType": {"S": _key(operation_id)}, "status": {"S": status[:40]},
                "ttl": {"N": str(int(time.time()) + KEEP_SECONDS)}})

    def ended(self, operation_id: str) -> bool:
        """Whether a notice says the operation ended."""
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            return "Item" in self.dynamodb.get_item(
                TableName=self.table, Key={"userId": {"S": self.user_id}, "syncType": {"S": _key(operation_id)}})


def _key(operation_id: str) -> str:
    return PREFIX + operation_id.rpartition("/")[2]
