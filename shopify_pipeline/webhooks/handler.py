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
from shopify_pipeline.dynamo.connections import Connection, UnknownUserError
from shopify_pipeline.dynamo.notices import BulkFinishNotices
from shopify_pipeline.dynamo.records import RecordChanges, StaleChangeError
from shopify_pipeline.errors import PermanentError
from shopify_pipeline.shopify.client import shop_base_url
from shopify_pipeline.shopify.sources import GRAPHQL
from shopify_pipeline.webhooks.compliance import Compliance, token_revoked
from shopify_pipeline.webhooks.inbox import WebhookInbox

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
# The mandatory compliance topics (sent to the app's compliance URL), and app/uninstalled.
COMPLIANCE_TOPICS = ("customers/redact", "customers/data_request", "shop/redact")
# Where the other topics are counted: a customer's privacy requests with the customers (their check shows them).
TOPIC_DATA_TYPES = {"customers/redact": "customers", "customers/data_request": "customers"}
BULK_FINISH = "bulk_operations/finish"  # wakes a sync waiting on the operation (dynamo/notices.py)
OTHER_TOPICS = ("app/uninstalled", BULK_FINISH, *COMPLIANCE_TOPICS)
KEY_PREFIX = "shopify-webhook"  # the idempotency key's prefix: the same whichever door or function applies it
CLAIM_SECONDS = 60.0  # outside Lambda, how long a claim on an event lasts (one left by a crash ends then)
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

    def __init__(self, engine, app_secret: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 claim_seconds: float = CLAIM_SECONDS) -> None:
        if not app_secret:
            raise ValueError("the app's client secret (the HMAC key) is empty")
        self.engine = engine
        self._secret = app_secret.encode()
        self._now = now
        self.claim_seconds = claim_seconds
        self.changes = RecordChanges(engine.dynamodb, engine.settings)
        self.compliance = Compliance(engine)
        self._shops: dict[str, list[Connection]] | None = None
        self._shops_read = 0.0
        self._clock = time.monotonic
        persistence = DynamoDBPersistenceLayer(table_name=engine.settings.tables.webhook_events,
                                               boto3_client=engine.dynamodb)
        self._config = IdempotencyConfig(event_key_jmespath="event_id", expires_after_seconds=EVENT_DAYS * 86_400,
                                         raise_on_no_idempotency_key=True,
                                         # Called only when the event was applied before: a duplicate.
                                         response_hook=lambda response, _: {**response, "result": "duplicate"})
        self._apply_once = idempotent_function(data_keyword_argument="event", persistence_store=persistence,
                                               config=self._config, key_prefix=KEY_PREFIX)(self._apply)

    def handle(self, delivery: Delivery, lambda_context: object = None) -> Outcome:
        """Check `delivery` and apply it now, once for every connection of its shop (EventBridge, whose sender
        waits; and tests). `lambda_context` bounds the claim on the event by the invocation's time left (a
        claim left by a crash then ends with the invocation)."""
        checked = self._check(delivery)
        if isinstance(checked, Outcome):
            return checked
        outcomes = []
        for event in checked:  # two users may hold copies of one shop: each is changed
            try:
                outcomes.append(self.apply(event, lambda_context))
            except IdempotencyAlreadyInProgressError:
                self.note(event["user"], event["topic"], event["triggered_at"], "in_progress")
                return Outcome(409, "in_progress", "the same event is being applied; Shopify retries it")
        first = outcomes[0]
        return Outcome(200, first["result"], first.get("detail", ""))

    def accept(self, delivery: Delivery, inbox: WebhookInbox) -> tuple[Outcome, list[dict]]:
        """Check `delivery` and queue its events in `inbox` (the HTTPS door: Shopify waits 5 s, applying may
        wait longer for the shop's rate limit). Returns the answer and the events newly queued, for the
        caller's workers; a duplicate of an event still waiting is answered 200 and queued once."""
        checked = self._check(delivery)
        if isinstance(checked, Outcome):
            return checked, []
        queued = []
        for event in checked:
            if inbox.put(event):
                queued.append(event)
            else:  # the same event is waiting already: a duplicate delivery
                self.note(event["user"], event["topic"], event["triggered_at"], "duplicate")
        return Outcome(200, "accepted", f"{len(queued)} event(s) queued" if queued else "already queued"), queued

    def apply(self, event: dict, lambda_context: object = None) -> dict:
        """Apply one checked event for its user, once per event id (a repeat answers "duplicate"); the result is
        counted for the `webhooks_applied` check. Raises IdempotencyAlreadyInProgressError while another
        delivery of the event is being applied, and any failure worth trying again."""
        self._config.register_lambda_context(lambda_context or _Claim(self.claim_seconds))
        result = self._apply_once(event=event)
        if event["topic"] != "shop/redact":  # nothing of an erased shop is written again, counters included
            self.note(event["user"], event["topic"], event["triggered_at"], result["result"])
        return result

    def _check(self, delivery: Delivery) -> Outcome | list[dict]:
        """The events of an authentic, well-formed delivery, one per connection of its shop, or the answer
        that refuses (or ignores) it."""
        if delivery.via == "https" and not self.authentic(delivery):
            log.warning("webhook %s for %s refused: its HMAC does not match (401)", delivery.topic, delivery.shop)
            self._note_all(delivery, "rejected")
            return Outcome(401, "rejected", "HMAC mismatch")
        if delivery.topic not in RECORD_TOPICS and delivery.topic not in OTHER_TOPICS:
            return Outcome(200, "ignored", f"topic {delivery.topic} is not handled")
        connections = self._connections(delivery.shop)
        if not connections:
            log.warning("webhook %s for unknown shop %s: no connection", delivery.topic, delivery.shop)
            # A compliance request for a shop we hold nothing of (erased already) is done: Shopify wants a 200.
            status = 200 if delivery.topic in COMPLIANCE_TOPICS else 404
            return Outcome(status, "ignored" if status == 200 else "rejected", "unknown shop")
        problem = _malformed(delivery)
        if problem:
            self._note_all(delivery, "rejected")
            return Outcome(400, "rejected", problem)
        body = json.loads(delivery.body)
        # The key of "once". For a record topic, the signed topic and body rather than X-Shopify-Event-Id: the
        # event id header is not signed, so a captured body re-posted under new ids must not be read back from
        # Shopify again and again, and a record's body always differs between two changes (its updated_at).
        # Other bodies may repeat for a new event (the shop of a second uninstall): those go by the event id.
        once = (hashlib.sha256(delivery.topic.encode() + b"\n" + delivery.body).hexdigest()[:40]
                if delivery.topic in RECORD_TOPICS else delivery.event_id)
        return [{"event_id": f"{delivery.shop}:{once}:{connection.user_id}", "delivery": delivery.event_id,
                 "topic": delivery.topic, "user": connection.user_id, "shop": delivery.shop,
                 "id": body.get("id"), "triggered_at": delivery.triggered_at,
                 "received_at": self._now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),  # to the microsecond, as connectedAt
                 **_topic_fields(delivery.topic, body)}
                for connection in connections]

    def _note_all(self, delivery: Delivery, result: str) -> None:
        for connection in self._connections(delivery.shop):
            self.note(connection.user_id, delivery.topic, delivery.triggered_at, result)

    def note(self, user_id: str, topic: str, triggered_at: str | None, result: str, count: int = 1) -> None:
        """Per user and data type: how many events were applied, duplicates, stale, rejected or failed, and the
        lag of the last one applied (from Shopify's trigger to now). The `webhooks_applied` check reads it."""
        data_type = RECORD_TOPICS.get(topic, (TOPIC_DATA_TYPES.get(topic, "shop"), ""))[0]
        now = self._now()
        names = {"#c": f"{result}_{data_type}"}
        values = {":one": {"N": str(count)}, ":now": {"S": now.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        expression = "ADD #c :one SET updatedAt = :now"
        triggered = _parse_time(triggered_at)
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

    def _connections(self, shop: str) -> list[Connection]:
        """The connections of the shop domain, from a map of every connection read at most every minute (and
        again for a shop not in it)."""
        if self._shops is None or self._clock() - self._shops_read > CONNECTIONS_SECONDS or shop not in self._shops:
            shops: dict[str, list[Connection]] = {}
            for connection in self.engine.connections.list():
                shops.setdefault(shop_domain(connection.shop, self.engine.shopify_settings.allow_local_shops),
                                 []).append(connection)
            self._shops, self._shops_read = shops, self._clock()
        return self._shops.get(shop, [])

    def _apply(self, event: dict) -> dict:
        """Apply one event for one user (once: see `handle`). Raises on failures worth Shopify's retry."""
        try:
            connection = self.engine.connections.get(event["user"])
        except UnknownUserError:
            return {"result": "ignored", "detail": "the user is no longer connected"}
        if shop_domain(connection.shop, self.engine.shopify_settings.allow_local_shops) != event["shop"]:
            return {"result": "ignored", "detail": "the user is connected to another shop now"}
        at = event["triggered_at"] or self._iso_now()
        topic = event["topic"]
        if topic in COMPLIANCE_TOPICS:
            return self._compliance(connection, event, at)
        if topic == BULK_FINISH:
            BulkFinishNotices(self.engine.dynamodb, self.engine.settings.tables.checkpoints,
                              connection.user_id).record(event["operation"], event["status"])
            return {"result": "applied", "detail": f"bulk operation {event['operation']} {event['status']}"}
        if topic == "app/uninstalled":
            # The HMAC does not cover the topic header: only Shopify refusing our token proves the uninstall.
            if not token_revoked(self.engine, connection):
                return {"result": "stale", "detail": "Shopify still accepts the token: the app is installed"}
            # Never later than its arrival: a triggered-at in the future cannot outrun a later reconnect.
            moments = [m for m in (_parse_time(at), _parse_time(event.get("received_at"))) if m is not None]
            at = min(moments).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moments else self._iso_now()
            if not self.engine.connections.mark_disconnected(connection.user_id, self._iso_now(), before=at):
                return {"result": "stale", "detail": "the shop was connected again after this uninstall"}
            log.warning("%s uninstalled the app: connection marked disconnected", connection.user_id)
            return {"result": "applied", "detail": "disconnected"}
        data_type, change = RECORD_TOPICS[topic]
        record_id = event["id"]
        if connection.stored_shape(data_type) not in (None, connection.api):
            # The API changed and the full sync that rewrites the table has not run yet: no mixed shapes.
            return {"result": "ignored", "detail": f"{data_type} are stored in the other API's shape"}
        document = self._current(connection, data_type, record_id)
        if change == "delete":
            # The signed body does not cover the topic header: a delete is applied only if Shopify agrees.
            if document is not None:
                return {"result": "stale", "detail": f"{data_type} {record_id} still exists in Shopify"}
            self.changes.delete(connection.user_id, data_type, record_id, at)
            return {"result": "applied", "detail": f"{data_type} {record_id} deleted"}
        if document is None:  # read by id (not the search index, which lags): it was deleted since
            return {"result": "stale", "detail": f"{data_type} {record_id} no longer exists in Shopify"}
        document = self.compliance.redacted(connection.user_id, data_type, document)
        if document is None:
            return {"result": "stale", "detail": f"{data_type} {record_id} was redacted"}
        try:
            self.changes.upsert(connection.user_id, data_type, document)
        except StaleChangeError as stale:
            return {"result": "stale", "detail": str(stale)}
        return {"result": "applied", "detail": f"{data_type} {record_id} stored"}

    def _compliance(self, connection: Connection, event: dict, at: str) -> dict:
        topic, user = event["topic"], connection.user_id
        if topic == "shop/redact":
            # Shopify sends it 48 hours after the app was uninstalled; a replayed body under this topic for a
            # shop that still has the app installed erases nothing.
            if not connection.disconnected_at or not token_revoked(self.engine, connection):
                return {"result": "stale", "detail": "the shop still has the app installed"}
            return {"result": "applied", "detail": json.dumps(self.compliance.redact_shop(user))}
        if topic == "customers/redact":
            return {"result": "applied", "detail": json.dumps(self.compliance.redact_customer(
                user, event["customer_id"], event["orders"], at))}
        return {"result": "applied", "detail": json.dumps(self.compliance.data_request(
            user, event["customer_id"], event["orders"], str(event["request_id"]), at))}

    def _current(self, connection: Connection, data_type: str, record_id: int) -> dict | None:
        """The record as the connection's API serves it now (GraphQL: read directly by id, nested items
        complete; REST: by `ids`), or None when Shopify has no such record."""
        source = self.engine.page_source(connection)
        try:
            if connection.api == GRAPHQL:
                return source.record(data_type, record_id)
            page = source.page(data_type, {"ids": record_id}, None)
        finally:
            source.close()
        found = [r for r in page.records if _legacy_id(r, connection.api) == record_id]
        return found[0] if found else None

    def _iso_now(self) -> str:
        return self._now().strftime("%Y-%m-%dT%H:%M:%SZ")


class _Claim:
    """Stands in for a Lambda context outside Lambda: an event's claim lasts `seconds`, so one left by a
    crash ends then and Shopify's next retry applies the event."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def _malformed(delivery: Delivery) -> str | None:
    """Why the delivery cannot be applied, or None. The body must have the shape of its topic (the HMAC covers
    the body only, not the topic and shop headers), and name the shop of the header when it names one."""
    if not delivery.event_id:
        return "no X-Shopify-Event-Id"
    try:
        body = json.loads(delivery.body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if "shop_domain" in body and body["shop_domain"] != delivery.shop:
        return "the body names another shop"
    topic = delivery.topic
    if topic in RECORD_TOPICS and _int(body.get("id")) is None:
        return "the payload has no numeric id"
    if topic in COMPLIANCE_TOPICS and body.get("shop_domain") != delivery.shop:
        return "a compliance payload must name its shop"
    if topic in ("customers/redact", "customers/data_request"):
        fields = _compliance_fields(body)
        orders = "orders_to_redact" if topic == "customers/redact" else "orders_requested"
        if fields["customer_id"] is None or not isinstance(body.get(orders), list):
            return f"a {topic} payload needs customer.id and {orders}"
        if topic == "customers/data_request" and fields["request_id"] is None:
            return "a customers/data_request payload needs data_request.id"
    if topic == "app/uninstalled" and body.get("myshopify_domain") != delivery.shop:
        return "an app/uninstalled payload is the shop: its myshopify_domain must be the header's"
    if topic == BULK_FINISH and not (str(body.get("admin_graphql_api_id")).startswith("gid://shopify/BulkOperation/")
                                     and isinstance(body.get("status"), str)):
        return "a bulk_operations/finish payload needs admin_graphql_api_id and status"
    if topic == "shop/redact" and set(body) - {"shop_id", "shop_domain"}:
        return "a shop/redact payload holds only shop_id and shop_domain"
    return None


def _parse_time(text: str | None) -> datetime | None:
    """A header's time in UTC (without a zone: taken as UTC), or None when it is not a time."""
    try:
        moment = datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _topic_fields(topic: str, body: dict) -> dict:
    """What an event keeps of its body beyond the record id: a compliance request's ids, a bulk operation's."""
    if topic == BULK_FINISH:
        return {"operation": body["admin_graphql_api_id"], "status": body["status"]}
    return _compliance_fields(body) if topic in COMPLIANCE_TOPICS else {}


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
