"""One webhook handler with two doors (issue #15): an HTTPS delivery (headers and the raw body, HMAC checked)
or an EventBridge event (its envelope; AWS vouches for it, there is no HMAC).

What it does with a delivery, in order:

1. **Authenticity** (HTTPS): HMAC-SHA256 of the raw body with the app's client secret, base64, compared in
   constant time, before anything is parsed: a mismatch is 401.
2. **Whose**: the connection of the shop (`X-Shopify-Shop-Domain`); none is 404, recorded in the log.
3. **Once**: deliveries are at least once; the `X-Shopify-Event-Id` is claimed in the webhook events table
   (Powertools' DynamoDB idempotency), so a duplicate is answered without being applied again, and a
   delivery whose apply failed is applied when Shopify retries it.
4. **Apply** (`orders/create|updated|delete`, `products/…`, `customers/…`): a create or update stores the
   record as the connection's API serves it now (for GraphQL connections it is read from Shopify by id: the
   webhook body is REST-shaped, and a stale retry carries an old version), never over a newer copy nor over a
   deletion's tombstone (`RecordChanges`); a delete removes the record and leaves a tombstone.
   `app/uninstalled` marks the connection disconnected.

Nothing here logs a payload: webhooks carry customers' personal data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

from shopify_pipeline.dynamo.client import translate_errors
from shopify_pipeline.dynamo.connections import Connection
from shopify_pipeline.dynamo.records import RecordChanges, StaleChangeError
from shopify_pipeline.errors import PermanentError
from shopify_pipeline.shopify.client import shop_base_url
from shopify_pipeline.shopify.sources import GRAPHQL
from shopify_pipeline.webhooks.compliance import Compliance

log = logging.getLogger(__name__)
# Powertools asks for a Lambda context to bound in-progress claims by the invocation's time left; outside Lambda
# the claim's own expiry (an hour) bounds them instead.
warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left", category=UserWarning)

# topic -> (data type, what happened)
RECORD_TOPICS = {
    "orders/create": ("orders", "upsert"), "orders/updated": ("orders", "upsert"),
    "orders/delete": ("orders", "delete"),
    "products/create": ("products", "upsert"), "products/update": ("products", "upsert"),
    "products/delete": ("products", "delete"),
    "customers/create": ("customers", "upsert"), "customers/update": ("customers", "upsert"),
    "customers/delete": ("customers", "delete"),
}
# app/uninstalled and the mandatory compliance topics (sent to the app's compliance URL).
OTHER_TOPICS = ("app/uninstalled", "customers/redact", "customers/data_request", "shop/redact")
WEBHOOK_STATUS = "webhook_status"  # the per-user counters item in sync_checkpoints
EVENT_DAYS = 7  # an event id is remembered this long (Shopify retries a delivery for 4 hours)
CONNECTIONS_SECONDS = 60.0  # connections are read again at most this often (and for a shop not seen yet)


@dataclass(frozen=True)
class Delivery:
    """One webhook as it arrived. `signature` is X-Shopify-Hmac-Sha256 (None for EventBridge)."""

    topic: str
    shop: str
    event_id: str | None
    triggered_at: str | None
    body: bytes
    signature: str | None
    via: str = "https"

    @classmethod
    def from_http(cls, headers: Mapping[str, str], body: bytes) -> Delivery:
        """From an HTTPS POST's headers (any case) and raw body."""
        lower = {k.lower(): v for k, v in headers.items()}
        return cls(lower.get("x-shopify-topic", ""), lower.get("x-shopify-shop-domain", ""),
                   lower.get("x-shopify-event-id") or lower.get("x-shopify-webhook-id"),
                   lower.get("x-shopify-triggered-at"), body, lower.get("x-shopify-hmac-sha256"), "https")

    @classmethod
    def from_eventbridge(cls, event: Mapping) -> Delivery:
        """From an EventBridge event of Shopify's partner event source (`detail.metadata` and `detail.payload`)."""
        detail = event.get("detail") or {}
        metadata = {k.lower(): v for k, v in (detail.get("metadata") or {}).items()}
        return cls(metadata.get("x-shopify-topic", ""), metadata.get("x-shopify-shop-domain", ""),
                   metadata.get("x-shopify-event-id") or metadata.get("x-shopify-webhook-id"),
                   metadata.get("x-shopify-triggered-at"), json.dumps(detail.get("payload") or {}).encode(),
                   None, "eventbridge")


@dataclass(frozen=True)
class Outcome:
    """What to answer (`status`) and what happened (`result`: applied, duplicate, stale, ignored, rejected)."""

    status: int
    result: str
    detail: str = ""


class WebhookHandler:
    """Applies deliveries to DynamoDB through the engine's stores and page sources (see the module doc).
    `app_secret` is the app's client secret (the HMAC key); `now` is for tests."""

    def __init__(self, engine, app_secret: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
                 ) -> None:
        self.engine = engine
        self._secret = app_secret.encode()
        self._now = now
        self.changes = RecordChanges(engine.dynamodb, engine.settings)
        self.compliance = Compliance(engine)
        self._shops: dict[str, Connection] | None = None
        self._shops_read = 0.0
        self._clock = time.monotonic
        persistence = DynamoDBPersistenceLayer(table_name=engine.settings.tables.webhook_events,
                                               boto3_client=engine.dynamodb)
        config = IdempotencyConfig(event_key_jmespath="event_id", expires_after_seconds=EVENT_DAYS * 86_400,
                                   raise_on_no_idempotency_key=True,
                                   # Called only when the event was applied before: say it was a duplicate.
                                   response_hook=lambda response, _: {**response, "result": "duplicate"})
        self._apply_once = idempotent_function(data_keyword_argument="event", persistence_store=persistence,
                                               config=config)(self._apply)

    def handle(self, delivery: Delivery) -> Outcome:
        if delivery.via == "https" and not self.authentic(delivery):
            log.warning("webhook %s for %s refused: its HMAC does not match (401)", delivery.topic, delivery.shop)
            return Outcome(401, "rejected", "HMAC mismatch")
        connection = self._connection(delivery.shop)
        if connection is None:
            log.warning("webhook %s for unknown shop %s (404): no connection", delivery.topic, delivery.shop)
            return Outcome(404, "rejected", "unknown shop")
        if delivery.topic not in RECORD_TOPICS and delivery.topic not in OTHER_TOPICS:
            return Outcome(200, "ignored", f"topic {delivery.topic} is not handled")
        if not delivery.event_id:
            return Outcome(400, "rejected", "no X-Shopify-Event-Id")
        try:
            body = json.loads(delivery.body)
        except ValueError:
            return Outcome(400, "rejected", "the body is not JSON")
        if not isinstance(body, dict):
            return Outcome(400, "rejected", "the body is not a JSON object")
        event = {"event_id": f"{delivery.shop}:{delivery.event_id}", "topic": delivery.topic,
                 "user": connection.user_id, "id": body.get("id"), "triggered_at": delivery.triggered_at,
                 **_compliance_fields(body)}
        try:
            result = self._apply_once(event=event)
        except IdempotencyAlreadyInProgressError:
            return Outcome(409, "in_progress", "the same event is being applied; Shopify retries it")
        if delivery.topic != "shop/redact":  # nothing of an erased shop is written again, counters included
            self._note(connection.user_id, delivery, result["result"])
        return Outcome(200, result["result"], result.get("detail", ""))

    def _note(self, user_id: str, delivery: Delivery, result: str) -> None:
        """Per user and data type: how many events were applied, duplicates, stale or rejected, and the lag of
        the last one applied (from Shopify's trigger to now). The `webhooks_applied` asset check reads it."""
        data_type = RECORD_TOPICS.get(delivery.topic, ("shop", ""))[0]
        now = self._now()
        names = {"#c": f"{result}_{data_type}"}
        values = {":one": {"N": "1"}, ":now": {"S": now.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        expression = "ADD #c :one SET updatedAt = :now"
        triggered = _parse_time(delivery.triggered_at)
        if result == "applied" and triggered is not None:
            names.update({"#l": f"lastApplied_{data_type}", "#g": f"lagSeconds_{data_type}"})
            values[":lag"] = {"N": f"{max(0.0, (now - triggered).total_seconds()):.3f}"}
            expression += ", #l = :now, #g = :lag"
        table = self.engine.settings.tables.checkpoints
        with translate_errors(table, self.engine.dynamodb.meta.endpoint_url):
            self.engine.dynamodb.update_item(
                TableName=table, Key={"userId": {"S": user_id}, "syncType": {"S": WEBHOOK_STATUS}},
                UpdateExpression=expression, ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def authentic(self, delivery: Delivery) -> bool:
        expected = base64.b64encode(hmac.new(self._secret, delivery.body, hashlib.sha256).digest())
        return hmac.compare_digest(expected, (delivery.signature or "").encode())

    def _connection(self, shop: str) -> Connection | None:
        """The connection of the shop domain, from a map of every connection read at most every minute."""
        if self._shops is None or self._clock() - self._shops_read > CONNECTIONS_SECONDS or shop not in self._shops:
            self._shops = {shop_domain(c.shop, self.engine.shopify_settings.allow_local_shops): c
                           for c in self.engine.connections.list()}
            self._shops_read = self._clock()
        return self._shops.get(shop)

    def _apply(self, event: dict) -> dict:
        """Apply one event (once per event id: see `handle`). Raises on failures worth Shopify's retry."""
        connection = self.engine.connections.get(event["user"])
        at = event["triggered_at"] or self._iso_now()
        if event["topic"] == "customers/redact":
            return {"result": "applied", "detail": json.dumps(self.compliance.redact_customer(
                connection.user_id, event["customer_id"], event["orders"], at))}
        if event["topic"] == "customers/data_request":
            return {"result": "applied", "detail": json.dumps(self.compliance.data_request(
                connection.user_id, event["customer_id"], event["orders"], str(event["request_id"]), at))}
        if event["topic"] == "shop/redact":
            return {"result": "applied", "detail": json.dumps(self.compliance.redact_shop(connection.user_id))}
        if event["topic"] == "app/uninstalled":
            self.engine.connections.mark_disconnected(connection.user_id, self._iso_now())
            log.warning("%s uninstalled the app: connection marked disconnected", connection.user_id)
            return {"result": "applied", "detail": "disconnected"}
        data_type, change = RECORD_TOPICS[event["topic"]]
        record_id = event["id"]
        if isinstance(record_id, bool) or not isinstance(record_id, int):
            return {"result": "rejected", "detail": "the payload has no numeric id"}
        if change == "delete":
            self.changes.delete(connection.user_id, data_type, record_id, event["triggered_at"] or self._iso_now())
            return {"result": "applied", "detail": f"{data_type} {record_id} deleted"}
        document = self._current(connection, data_type, record_id)
        if document is None:  # deleted in Shopify since: its delete webhook does the rest
            return {"result": "stale", "detail": f"{data_type} {record_id} no longer exists in Shopify"}
        try:
            self.changes.upsert(connection.user_id, data_type, document)
        except StaleChangeError as stale:
            return {"result": "stale", "detail": str(stale)}
        return {"result": "applied", "detail": f"{data_type} {record_id} stored"}

    def _current(self, connection: Connection, data_type: str, record_id: int) -> dict | None:
        """The record as the connection's API serves it now (GraphQL: complete, nested items included)."""
        source = self.engine.page_source(connection)
        try:
            page = source.page(data_type, {"id": record_id} if connection.api == GRAPHQL else {"ids": record_id},
                               None)
        finally:
            source.close()
        found = [r for r in page.records if _legacy_id(r, connection.api) == record_id]
        return found[0] if found else None

    def _iso_now(self) -> str:
        return self._now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return None


def _compliance_fields(body: dict) -> dict:
    """The ids a compliance payload names (never its personal data): customer, orders, data request."""
    customer = body.get("customer") if isinstance(body.get("customer"), dict) else {}
    orders = body.get("orders_to_redact") or body.get("orders_requested") or []
    request = body.get("data_request") if isinstance(body.get("data_request"), dict) else {}
    return {"customer_id": _int(customer.get("id")), "request_id": _int(request.get("id")),
            "orders": [n for n in (_int(o) for o in orders if not isinstance(o, bool)) if n is not None]}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _legacy_id(record: dict, api: str) -> int | None:
    value = record.get("legacyResourceId") if api == GRAPHQL else record.get("id")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def shop_domain(shop: str, allow_local: bool = False) -> str:
    """The `{name}.myshopify.com` domain Shopify puts in X-Shopify-Shop-Domain, for a connection's shop (a
    domain, a URL, or with `allow_local` a simulator URL `http://127.0.0.1:…/shops/{name}`)."""
    try:
        base = shop_base_url(shop, allow_local)
    except PermanentError:
        return shop
    parts = urlsplit(base)
    if parts.hostname and parts.hostname.endswith(".myshopify.com"):
        return parts.hostname
    return f"{parts.path.rstrip('/').rpartition('/')[2]}.myshopify.com"
