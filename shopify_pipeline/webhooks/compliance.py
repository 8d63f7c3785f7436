"""Shopify's mandatory compliance webhooks (issue #15): what we store about a customer is erased, or handed
over, when the merchant asks; a shop's data is erased after it uninstalled the app. Shopify gives 30 days; we
act when the webhook arrives. Each action is logged with ids only, never the personal data.

- `customers/redact`: the customer's record is deleted (with a tombstone) and the personal fields
  (`dynamo/redaction.py`) of the listed `orders_to_redact` are blanked in the orders table; permanent markers
  keep them so against later webhooks and syncs (Shopify may serve the data for a while still).
- `shop/redact`: every item of the shop's user is deleted: records and their chunks in the three record
  tables, checkpoints with their staged pages, status, failed batches, leases and tombstones, and the
  connection itself.
- **Retention after an uninstall**: `app/uninstalled` only marks the connection disconnected; its data is kept
  until `shop/redact` (Shopify sends it 48 hours after the uninstall), and at most
  `SHOPIFY_UNINSTALLED_RETENTION_DAYS` (default 30, Shopify's deadline; `none`: until shop/redact) after the
  uninstall: `purge_uninstalled` (the daily `purge_uninstalled` schedule, or `shopify-pipeline users
  purge-uninstalled`) erases it as shop/redact would, should that webhook never arrive.
- `customers/data_request`: the customer's stored record and the listed orders are written as one JSON file
  to `SHOPIFY_DATA_REQUEST_DIR` (for the merchant, who must hand it to the customer), and a record of the
  request (id, file, time) is kept in `sync_checkpoints` (`data_request_{id}`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

from shopify_pipeline.dynamo.client import translate_errors
from shopify_pipeline.dynamo.codec import document_key, record_key
from shopify_pipeline.dynamo.connections import UnknownUserError
from shopify_pipeline.dynamo.lease import LeaseHeldError
from shopify_pipeline.dynamo.records import RecordChanges, RecordTable, StaleChangeError
from shopify_pipeline.dynamo.redaction import Redactions, redact_order
from shopify_pipeline.exact_json import dumps_json
from shopify_pipeline.settings import DATA_TYPES, SYNC_TYPES, SettingsError
from shopify_pipeline.shopify.auth import ReconnectError
from shopify_pipeline.shopify.errors import InvalidTokenError
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.webhooks.inbox import WebhookInbox

log = logging.getLogger(__name__)


SHOP_QUERY = "{ shop { id } }"  # the cheapest authenticated question: is our token still accepted?
RETENTION_VARIABLE = "SHOPIFY_UNINSTALLED_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 30  # Shopify's deadline for acting on shop/redact


def uninstalled_retention_days(environ: Mapping[str, str] | None = None) -> int | None:
    """How many days an uninstalled shop's data is kept at most (None: until shop/redact arrives)."""
    text = ((os.environ if environ is None else environ).get(RETENTION_VARIABLE) or "").strip()
    if not text:
        return DEFAULT_RETENTION_DAYS
    if text.lower() == "none":
        return None
    if not (text.isascii() and text.isdigit()):
        raise SettingsError(f"{RETENTION_VARIABLE}={text!r}: use a number of days (default "
                            f"{DEFAULT_RETENTION_DAYS}; 0 erases at the next purge) or `none` (keep until shop/redact)")
    return int(text)


def token_revoked(engine, connection) -> bool:
    """Whether Shopify refuses the connection's token, as it does once the app is uninstalled (a cheap
    `shop { id }` query): the proof an uninstall needs, since a webhook's HMAC does not cover its topic.
    Other failures raise."""
    client = engine.shopify_client(connection)
    try:
        GraphQLClient(client).execute(SHOP_QUERY)
    except (InvalidTokenError, ReconnectError):
        return True
    finally:
        client.close()
    return False


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def data_request_dir() -> Path:
    """Where data requests are written: `SHOPIFY_DATA_REQUEST_DIR`, else ./data_requests."""
    return Path(os.environ.get("SHOPIFY_DATA_REQUEST_DIR") or "data_requests")


class Compliance:
    """The three compliance actions on one engine's tables."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.changes = RecordChanges(engine.dynamodb, engine.settings)
        self.redactions = Redactions(engine.dynamodb, engine.settings)

    def redact_customer(self, user_id: str, customer_id: int, order_ids: list[int], at: str) -> dict:
        # The markers first: from now on nothing stores this customer or these orders' personal data again.
        self.redactions.mark(user_id, "customers", [customer_id], at)
        self.redactions.mark(user_id, "orders", order_ids, at)
        self.changes.delete(user_id, "customers", customer_id, at)
        orders = RecordTable(self.engine.dynamodb, self.engine.settings, "orders")
        redacted = 0
        for order_id in order_ids:
            for _ in range(5):  # a newer copy stored meanwhile is redacted in its turn
                document = orders.get(user_id, order_id)
                if document is None:
                    break
                try:
                    self.changes.upsert(user_id, "orders", redact_order(document))
                    redacted += 1
                    break
                except StaleChangeError:
                    continue
            else:
                raise RuntimeError(f"order {order_id} kept changing while it was redacted; Shopify retries")
        log.warning("customers/redact for %s: customer %s deleted, %d of %d orders redacted", user_id, customer_id,
                    redacted, len(order_ids))
        return {"customer": customer_id, "orders_redacted": redacted}

    def redacted(self, user_id: str, data_type: str, document: dict) -> dict | None:
        """`document` as a webhook may store it: None for a redacted customer, blanked for a redacted order."""
        record_id = record_key(document)
        return self.redactions.applied(user_id, data_type, document, record_id)

    def redact_shop(self, user_id: str) -> dict:
        from shopify_pipeline.sync.service import SyncService

        service = SyncService(self.engine)
        for sync_type in SYNC_TYPES:  # checkpoints and their staged pages
            service.clear_checkpoint(user_id, sync_type)  # refused while a sync runs: Shopify retries
        deleted = {data_type: self._delete_records(user_id, data_type) for data_type in DATA_TYPES}
        deleted["state"] = self._delete_user_items(self.engine.settings.tables.checkpoints, user_id)
        deleted["webhook_inbox"] = WebhookInbox(self.engine.dynamodb,
                                                self.engine.settings.tables.webhook_inbox).drop_user(user_id)
        deleted["data_request_files"] = 0
        for export in data_request_dir().glob(f"{user_id}-customer-*-request-*.json"):
            export.unlink()
            deleted["data_request_files"] += 1
        self.engine.connections.remove(user_id)
        log.warning("shop/redact for %s: every record, checkpoint, status and the connection deleted (%s)",
                    user_id, deleted)
        return deleted

    def purge_uninstalled(self, days: int, now: datetime | None = None) -> dict[str, dict]:
        """Erase, as shop/redact does, every user whose shop uninstalled the app `days` or more days ago (the
        backstop for a shop/redact that never came). Each shop is read again first, and erased only while
        Shopify refuses its token: a shop that reconnected or reinstalled meanwhile is kept (and marked
        connected again). {user: {"erased": what was deleted} | {"kept": why} | {"failed": why (a sync of the
        user holds its lease: the next purge tries again)}}."""
        if days < 0:
            raise SettingsError(f"a retention of {days} days: use 0 or more")
        now = now or datetime.now(timezone.utc)
        outcome: dict[str, dict] = {}
        for listed in self.engine.connections.list():
            if not listed.disconnected_at or now - _utc(listed.disconnected_at) < timedelta(days=days):
                continue
            user = listed.user_id
            try:
                connection = self.engine.connections.get(user)
            except UnknownUserError:
                continue  # removed meanwhile
            if connection.disconnected_at != listed.disconnected_at:
                continue  # connected again meanwhile
            if not token_revoked(self.engine, connection):
                self.engine.connections.clear_disconnected(user, connection.disconnected_at)
                outcome[user] = {"kept": "Shopify accepts its token again (the app was reinstalled)"}
                continue
            try:
                outcome[user] = {"erased": self.redact_shop(user)}
            except LeaseHeldError as error:
                outcome[user] = {"failed": f"not erased yet: {error}"}
        return outcome

    def data_request(self, user_id: str, customer_id: int, order_ids: list[int], request_id: str, at: str) -> dict:
        customers = RecordTable(self.engine.dynamodb, self.engine.settings, "customers")
        orders = RecordTable(self.engine.dynamodb, self.engine.settings, "orders")
        export = {"user": user_id, "customer_id": customer_id, "data_request_id": request_id, "exported_at": at,
                  "customer": customers.get(user_id, customer_id),
                  "orders": [doc for doc in (orders.get(user_id, order_id) for order_id in order_ids) if doc]}
        directory = data_request_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"{user_id}-customer-{customer_id}-request-{int(request_id)}.json"
        # Personal data: created readable by the owner only (never world-readable for a moment); a request
        # delivered again rewrites its own file.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(dumps_json(export))
        table = self.engine.settings.tables.checkpoints
        with translate_errors(table, self.engine.dynamodb.meta.endpoint_url):
            self.engine.dynamodb.put_item(TableName=table, Item={
                "userId": {"S": user_id}, "syncType": {"S": f"data_request_{request_id}"},
                "customerId": {"N": str(customer_id)}, "file": {"S": str(path)}, "at": {"S": at},
                "orders": {"N": str(len(export["orders"]))}})
        log.warning("customers/data_request %s for %s: customer %s and %d orders written to %s", request_id,
                    user_id, customer_id, len(export["orders"]), path)
        return {"file": str(path), "orders": len(export["orders"])}

    def _delete_records(self, user_id: str, data_type: str) -> int:
        settings, client = self.engine.settings, self.engine.dynamodb
        table = settings.tables.records(data_type)
        items = list(RecordTable(client, settings, data_type).items(user_id, ["userId", "id", "docChunks"]))
        for item in items:  # chunks of documents too big for one item
            for chunk in range(int(item.get("docChunks", {}).get("N", "0"))):
                key = document_key(table, user_id, int(item["id"]["N"]))
                with translate_errors(settings.tables.documents, client.meta.endpoint_url):
                    client.delete_item(TableName=settings.tables.documents,
                                       Key={"documentKey": {"S": key}, "chunk": {"N": str(chunk)}})
        self.engine.writer.delete_records(user_id, data_type, [int(item["id"]["N"]) for item in items])
        return len(items)

    def _delete_user_items(self, table: str, user_id: str) -> int:
        client = self.engine.dynamodb
        kwargs = {"TableName": table, "KeyConditionExpression": "userId = :u",
                  "ExpressionAttributeValues": {":u": {"S": user_id}}, "ProjectionExpression": "userId, syncType",
                  "ConsistentRead": True}
        count = 0
        while True:
            with translate_errors(table, client.meta.endpoint_url):
                page = client.query(**kwargs)
                for item in page["Items"]:
                    client.delete_item(TableName=table, Key=item)
                    count += 1
            if "LastEvaluatedKey" not in page:
                return count
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

