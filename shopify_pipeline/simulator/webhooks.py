"""Shopify webhooks: subscriptions and signed HTTPS deliveries of every change the simulator makes.

Subscriptions are made with GraphQL (`webhookSubscriptionCreate`, `webhookSubscriptionUpdate`,
`webhookSubscriptionDelete`, `webhookSubscriptions`, `webhookSubscription`) or `Simulator.subscribe`; the mandatory
compliance topics go to the shop's `compliance_webhook_url` (app configuration in Shopify, not the API). Every
record created, updated or deleted becomes an event for the matching topic; worker threads POST it to each
subscribed address with Shopify's headers, signed with the app's client secret, so a mutation never waits for
a receiver. A failed delivery (non-2xx, connection error, no answer in time) is retried on Shopify's schedule in
simulated time, with the original payload, event id and trigger time, then dropped. WebhookFaults lose,
duplicate, reorder, replay stale and mis-sign deliveries on demand.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import random
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from graphql import GraphQLError

from shopify_pipeline.simulator.config import COMPLIANCE_TOPICS, WEBHOOK_TOPICS, WebhookFaults
from shopify_pipeline.simulator.data import US, Record, record_id
from shopify_pipeline.simulator.graphql_api import Cursors, connection, gid, page_size, snapshot, utc_from_us
from shopify_pipeline.simulator.shop import ShopRuntime
from shopify_pipeline.simulator.store import dumps

# (data type, change) → the topic Shopify sends; note orders/updated against products/update.
CHANGE_TOPICS = {
    ("orders", "create"): "orders/create",
    ("orders", "update"): "orders/updated",
    ("orders", "delete"): "orders/delete",
    ("products", "create"): "products/create",
    ("products", "update"): "products/update",
    ("products", "delete"): "products/delete",
    ("customers", "create"): "customers/create",
    ("customers", "update"): "customers/update",
    ("customers", "delete"): "customers/delete",
}
TOPIC_NAMES = {topic: name for name, topic in WEBHOOK_TOPICS.items()}
# Shopify delivers to https:// only; the simulator also delivers to http:// on this machine (test receivers).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
USER_AGENT = "Shopify-Captain-Hook"
WORKERS = 8  # deliveries in flight at once, for all shops of one simulator
ATTEMPT_LOG_SIZE = 10_000
DUPLICATE_ADDRESS = "Address for this topic has already been taken"
NOT_FOUND = "Webhook subscription does not exist"
FIRST_DATA_REQUEST_ID = 9999
BULK_FINISHED = ("COMPLETED", "FAILED", "CANCELED")  # the ends bulk_operations/finish announces
BULK_WATCH_SECONDS = 0.1


def sign(secret: str, body: bytes) -> str:
    """X-Shopify-Hmac-Sha256: base64 of HMAC-SHA256 of the raw body, keyed with the app's client secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def trigger_time(epoch_us: int) -> str:
    """X-Shopify-Triggered-At: UTC with microseconds, e.g. 2026-01-10T16:00:00.123456Z."""
    moment = datetime.fromtimestamp(epoch_us // US, timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_us % US:06d}Z"


def topic_of(name_or_topic: str) -> str:
    """"orders/create" from "ORDERS_CREATE" or "orders/create"; ValueError for a topic a subscription cannot name."""
    topic = WEBHOOK_TOPICS.get(name_or_topic, name_or_topic)
    if topic not in TOPIC_NAMES:
        raise ValueError(f"unknown webhook topic {name_or_topic!r}; expected one of {', '.join(TOPIC_NAMES)} "
                         "(compliance topics go to ShopConfig.compliance_webhook_url)")
    return topic


def delete_payload(data_type: str, record_id_: int) -> dict[str, Any]:
    """What a */delete topic carries, as Shopify's sample payloads show: the id (customers add two fields)."""
    if data_type == "customers":
        return {"id": record_id_, "tax_exemptions": [], "admin_graphql_api_id": gid("Customer", record_id_)}
    return {"id": record_id_}


def address_error(uri: str) -> str | None:
    """Why an address cannot receive deliveries (Shopify's wording where known), or None."""
    if not uri.strip():
        return "Address can't be blank"
    if uri.startswith(("arn:aws:events:", "pubsub://")):
        return "Address is an event bus: the simulator delivers over HTTPS only"
    parts = urlsplit(uri)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return "Address protocol http:// is not supported"
    if parts.scheme not in ("http", "https"):
        return f"Address protocol {parts.scheme}:// is not supported" if parts.scheme else "Address is invalid"
    return None if parts.hostname else "Address is invalid"


def post(url: str, body: bytes, headers: dict[str, str], connect_timeout: float, timeout: float) -> int:
    """POST `body` and return the status; OSError or HTTPException when the connection fails or the answer
    is not complete within `timeout` seconds (redirects are not followed: a 3xx is a failure, as on Shopify)."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=connect_timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=connect_timeout)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if time.monotonic() > deadline:
            raise TimeoutError("the answer was not complete within the timeout")
        return response.status
    finally:
        conn.close()


class Subscription:
    """A shop-specific subscription: one topic, one address, the API version that serializes its payloads."""

    def __init__(self, number: int, topic: str, uri: str, api_version: str, include_fields: tuple[str, ...],
                 created: int) -> None:
        self.number = number
        self.topic = topic
        self.uri = uri
        self.api_version = api_version
        self.include_fields = include_fields
        self.created = created
        self.updated = created

    @property
    def id(self) -> str:
        return gid("WebhookSubscription", self.number)

    def document(self) -> dict[str, Any]:
        """The WebhookSubscription as GraphQL shows it (`callbackUrl` and `endpoint` are deprecated aliases)."""
        return {
            "__typename": "WebhookSubscription",
            "id": self.id,
            "legacyResourceId": str(self.number),
            "topic": TOPIC_NAMES[self.topic],
            "format": "JSON",
            "uri": self.uri,
            "callbackUrl": self.uri,
            "endpoint": {"__typename": "WebhookHttpEndpoint", "callbackUrl": self.uri},
            "apiVersion": {"handle": self.api_version, "displayName": self.api_version, "supported": True},
            "includeFields": list(self.include_fields),
            "createdAt": utc_from_us(self.created),
            "updatedAt": utc_from_us(self.updated),
        }


class Event:
    """Something that happened once: its id, topic, trigger time and payload as of that moment."""

    def __init__(self, number: int, topic: str, triggered_us: int, render: Callable[[], bytes],
                 record_key: tuple[str, int] | None) -> None:
        self.number = number  # per shop, for fault draws
        self.event_id = str(uuid.uuid4())
        self.topic = topic
        self.triggered_at = trigger_time(triggered_us)
        self.record_key = record_key
        self._render = render
        self._body: bytes | None = None

    def body(self) -> bytes:
        """The payload, rendered on first use from the record's version at the time of the event."""
        if self._body is None:
            self._body = self._render()
        return self._body


class Delivery:
    """One event on its way to one address; retries are the same Delivery sent again."""

    def __init__(self, owner: ShopWebhooks, event: Event, subscription: Subscription | None, url: str,
                 api_version: str, include_fields: tuple[str, ...], webhook_id: str | None = None,
                 kind: str = "original") -> None:
        self.owner = owner
        self.event = event
        self.subscription = subscription  # None for a compliance delivery (app configuration)
        self.url = url
        self.api_version = api_version
        self.include_fields = include_fields
        self.webhook_id = webhook_id or str(uuid.uuid4())
        self.kind = kind  # original, duplicate or stale
        self.attempts = 0
        self.state = "new"  # held, queued, in_flight, done, cancelled
        self.cancel_requested = False

    def copy(self, kind: str) -> Delivery:
        """The same delivery sent once more: same event, webhook id, payload and trigger time."""
        return Delivery(self.owner, self.event, self.subscription, self.url, self.api_version,
                        self.include_fields, self.webhook_id, kind)

    def body(self) -> bytes:
        """The event's payload, cut to `include_fields` when the subscription names some."""
        body = self.event.body()
        if not self.include_fields:
            return body
        wanted = set(self.include_fields)
        return dumps({key: value for key, value in json.loads(body).items() if key in wanted})


class ShopWebhooks:
    """One shop's subscriptions, events in flight, faults and counters; every method is thread-safe."""

    def __init__(self, service: WebhookService, runtime: ShopRuntime) -> None:
        self.service = service
        self.runtime = runtime
        self.config = runtime.config.webhooks
        self.faults = self.config.faults
        self.secret = runtime.config.app_secret
        self.compliance_url: str | None = None
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.subscriptions: dict[int, Subscription] = {}
        self.pending = 0
        self._open: set[Delivery] = set()
        self._held: list[Delivery] = []
        self._hold_generation = 0
        self._last_delivered: dict[tuple[str, str, int], Delivery] = {}
        self._event_numbers = itertools.count(1)
        self._data_requests = itertools.count(FIRST_DATA_REQUEST_ID)
        self._counts: Counter[str] = Counter()
        self._by_topic: dict[str, Counter[str]] = {}
        self._attempts: deque[dict[str, Any]] = deque(maxlen=ATTEMPT_LOG_SIZE)
        if runtime.config.compliance_webhook_url:
            self.set_compliance_url(runtime.config.compliance_webhook_url)
        runtime.data.listener = self.record_changed

    # -- subscriptions -----------------------------------------------------------------------------

    def subscribe(self, topic: str, uri: str, include_fields: tuple[str, ...] = (),
                  api_version: str | None = None) -> Subscription:
        """A new subscription; ValueError with Shopify's message for a bad or already subscribed address."""
        topic = topic_of(topic)
        problem = address_error(uri)
        if problem is not None:
            raise ValueError(problem)
        with self.lock:
            subscription = self._add(topic, uri, include_fields, api_version)
        if subscription is None:
            raise ValueError(DUPLICATE_ADDRESS)
        return subscription

    def unsubscribe(self, subscription_id: str) -> bool:
        """Delete a subscription and cancel its deliveries still to come. Returns whether it existed."""
        with self.lock:
            subscription = self._find(subscription_id)
            if subscription is None:
                return False
            self._remove(subscription)
            return True

    def documents(self) -> list[dict[str, Any]]:
        """Every subscription, oldest first, as GraphQL shows it."""
        with self.lock:
            return [subscription.document() for subscription in self.subscriptions.values()]

    def set_compliance_url(self, url: str | None) -> None:
        """Where customers/data_request, customers/redact and shop/redact go (None: nowhere)."""
        if url is not None:
            problem = address_error(url)
            if problem is not None:
                raise ValueError(problem)
        with self.lock:
            self.compliance_url = url

    def newest_version(self) -> str:
        return max(self.runtime.config.api_versions)

    def _add(self, topic: str, uri: str, include_fields: tuple[str, ...],
             api_version: str | None) -> Subscription | None:
        """A new subscription (lock held), or None when the topic already goes to that address."""
        if self._taken(topic, uri, None):
            return None
        number = self.service.next_subscription_number()
        subscription = Subscription(number, topic, uri, api_version or self.newest_version(), tuple(include_fields),
                                    self._now_us())
        self.subscriptions[number] = subscription
        return subscription

    def _taken(self, topic: str, uri: str, other_than: int | None) -> bool:
        return any(s.topic == topic and s.uri == uri and s.number != other_than for s in self.subscriptions.values())

    def _find(self, subscription_id: str) -> Subscription | None:
        prefix = "gid://shopify/WebhookSubscription/"
        tail = subscription_id.removeprefix(prefix)
        return self.subscriptions.get(int(tail)) if tail.isdigit() else None

    def _remove(self, subscription: Subscription) -> None:
        """Drop a subscription; Shopify halts its future deliveries, retries included."""
        del self.subscriptions[subscription.number]
        for delivery in list(self._open):
            if delivery.subscription is not subscription:
                continue
            if delivery.state == "in_flight":
                delivery.cancel_requested = True
            else:
                delivery.state = "cancelled"
                self._count("cancelled", delivery.event.topic)
                self._close(delivery)

    # -- GraphQL ------------------------------------------------------------------------------------

    def graphql_create(self, args: dict[str, Any], api_version: str) -> dict[str, Any]:
        """webhookSubscriptionCreate(topic:, webhookSubscription:)."""
        values = args["webhookSubscription"]
        field_name, uri, errors = self._input_address(values)
        if errors:
            return {"webhookSubscription": None, "userErrors": errors}
        with self.lock:
            subscription = self._add(WEBHOOK_TOPICS[args["topic"]], uri, tuple(values.get("includeFields") or ()),
                                     api_version)
            if subscription is None:
                error = user_error(["webhookSubscription", field_name], DUPLICATE_ADDRESS)
                return {"webhookSubscription": None, "userErrors": [error]}
            return {"webhookSubscription": subscription.document(), "userErrors": []}

    def graphql_update(self, args: dict[str, Any]) -> dict[str, Any]:
        """webhookSubscriptionUpdate(id:, webhookSubscription:): a new address applies to later events only."""
        values = args["webhookSubscription"]
        with self.lock:
            subscription = self._find(args["id"])
            if subscription is None:
                return {"webhookSubscription": None, "userErrors": [user_error(["id"], NOT_FOUND)]}
            field_name, uri, errors = self._input_address(values, subscription.uri)
            if not errors and self._taken(subscription.topic, uri, subscription.number):
                errors.append(user_error(["webhookSubscription", field_name], DUPLICATE_ADDRESS))
            if errors:
                return {"webhookSubscription": None, "userErrors": errors}
            subscription.uri = uri
            if values.get("includeFields") is not None:
                subscription.include_fields = tuple(values["includeFields"])
            subscription.updated = self._now_us()
            return {"webhookSubscription": subscription.document(), "userErrors": []}

    def graphql_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        """webhookSubscriptionDelete(id:)."""
        if self.unsubscribe(args["id"]):
            return {"deletedWebhookSubscriptionId": args["id"], "userErrors": []}
        return {"deletedWebhookSubscriptionId": None, "userErrors": [user_error(["id"], NOT_FOUND)]}

    def graphql_find(self, subscription_id: str) -> dict[str, Any] | None:
        """webhookSubscription(id:)."""
        with self.lock:
            subscription = self._find(subscription_id)
            return subscription.document() if subscription is not None else None

    def graphql_listing(self, args: dict[str, Any]) -> dict[str, Any]:
        """webhookSubscriptions(first:, after:, topics:, uri:, callbackUrl:, format:, sortKey:, reverse:)."""
        first = page_size(args)
        sort_key, reverse = args.get("sortKey") or "CREATED_AT", bool(args.get("reverse"))
        topics = {WEBHOOK_TOPICS[name] for name in args.get("topics") or ()}
        address = args.get("uri") or args.get("callbackUrl")
        cursors: Cursors = self.service.cursors
        with self.lock:
            found = [s for s in self.subscriptions.values()
                     if (not topics or s.topic in topics) and (address is None or s.uri == address)
                     and args.get("format") in (None, "JSON")]
            documents = {s.number: s.document() for s in found}

        def key(subscription: Subscription) -> list[int]:
            return [subscription.created if sort_key == "CREATED_AT" else subscription.number, subscription.number]

        found.sort(key=key, reverse=reverse)
        page = 1
        if args.get("after"):
            payload = cursors.decode(args["after"])
            if payload.get("sort") != [sort_key, reverse] or "k" not in payload:
                raise GraphQLError("Invalid cursor for current pagination sort.")
            after, page = payload["k"], int(payload["page"]) + 1
            found = [s for s in found if (key(s) < after if reverse else key(s) > after)]
        chunk = found[:first]
        edge_cursors = [functools.partial(cursors.encode, {"sort": [sort_key, reverse], "k": key(s), "page": page})
                        for s in chunk]
        return connection([documents[s.number] for s in chunk], edge_cursors, len(found) > first,
                          bool(args.get("after")))

    @staticmethod
    def _input_address(values: dict[str, Any], current: str | None = None) -> tuple[str, str, list[dict[str, Any]]]:
        """(the input field naming the address, the address, userErrors) of a WebhookSubscriptionInput."""
        field_name = "uri" if values.get("uri") is not None else "callbackUrl"
        uri = values.get("uri") or values.get("callbackUrl") or current or ""
        errors = []
        problem = address_error(uri)
        if problem is not None:
            errors.append(user_error(["webhookSubscription", field_name], problem))
        if values.get("format") == "XML":
            errors.append(user_error(["webhookSubscription", "format"], "The simulator delivers JSON only"))
        return field_name, uri, errors

    # -- events -------------------------------------------------------------------------------------

    def record_changed(self, data_type: str, action: str, records: list[Record]) -> None:
        """ShopData's listener (its lock held): an event per record for every subscribed address."""
        topic = CHANGE_TOPICS[(data_type, action)]
        with self.lock:
            if not any(s.topic == topic for s in self.subscriptions.values()):
                return
            now = self._now_us()
            for record in records:
                if action == "delete":
                    render: Callable[[], bytes] = functools.partial(dumps, delete_payload(data_type, record.id))
                    triggered = now
                else:
                    # The version as of now, rendered later by a worker: documents follow from the spec alone.
                    render = functools.partial(self.runtime.data.rest_bytes, data_type, snapshot(record))
                    triggered = record.updated
                self._publish(topic, render, triggered, (data_type, record.id))

    def watch_bulk(self, operation: Any) -> None:
        """bulk_operations/finish once `operation` (simulator.bulk.Operation) completes, fails or is canceled: its
        state is computed when asked, so it is looked at every BULK_WATCH_SECONDS (real) until it ends."""
        with self.lock:
            if not any(s.topic == "bulk_operations/finish" for s in self.subscriptions.values()):
                return

        def look() -> None:
            state = operation.view()
            if state.status not in BULK_FINISHED:
                self.service.schedule(time.monotonic() + BULK_WATCH_SECONDS, look)
                return
            document = operation.document(state)
            payload = {"admin_graphql_api_id": operation.id, "completed_at": document["completedAt"] or
                       utc_from_us(self._now_us()), "created_at": document["createdAt"],
                       "error_code": state.error_code and state.error_code.lower(), "status": state.status.lower(),
                       "type": "query"}
            body = dumps(payload)
            with self.lock:
                self._publish("bulk_operations/finish", lambda: body, self._now_us(), None)

        self.service.schedule(time.monotonic() + BULK_WATCH_SECONDS, look)

    def trigger_app_uninstalled(self) -> str | None:
        """app/uninstalled with the shop as its payload. Returns the event id (None: nobody subscribed)."""
        body = dumps(self.service.shop_document(self.runtime))
        with self.lock:
            return self._publish("app/uninstalled", lambda: body, self._now_us(), None)

    def trigger_customers_redact(self, customer_id: int, orders_to_redact: list[int] | None) -> str | None:
        """customers/redact; `orders_to_redact` defaults to the shop's live orders of that customer."""
        customer = self._customer(customer_id)
        orders = self._orders_of(customer_id) if orders_to_redact is None else list(orders_to_redact)
        return self._compliance("customers/redact", {**self._shop_fields(), "customer": customer,
                                                     "orders_to_redact": orders})

    def trigger_customers_data_request(self, customer_id: int, orders_requested: list[int] | None) -> str | None:
        """customers/data_request; `orders_requested` defaults to the shop's live orders of that customer."""
        customer = self._customer(customer_id)
        orders = self._orders_of(customer_id) if orders_requested is None else list(orders_requested)
        payload = {**self._shop_fields(), "orders_requested": orders, "customer": customer,
                   "data_request": {"id": next(self._data_requests)}}
        return self._compliance("customers/data_request", payload)

    def trigger_shop_redact(self) -> str | None:
        """shop/redact (Shopify sends it 48 hours after the app is uninstalled)."""
        return self._compliance("shop/redact", self._shop_fields())

    def _compliance(self, topic: str, payload: dict[str, Any]) -> str | None:
        body = dumps(payload)
        with self.lock:
            return self._publish(topic, lambda: body, self._now_us(), None)

    def _shop_fields(self) -> dict[str, Any]:
        document = self.service.shop_document(self.runtime)
        return {"shop_id": document["id"], "shop_domain": document["myshopify_domain"]}

    def _customer(self, customer_id: int) -> dict[str, Any]:
        """{id, email, phone} of a customer of this shop (deleted ones included: they had data)."""
        data = self.runtime.data
        with data.lock:
            record = data.collections["customers"].by_id.get(customer_id)
            count = max(len(data.collections["customers"].items), data.renderer.customers)
        index = record.index if record is not None else next(
            (i for i in range(count) if record_id("customers", i) == customer_id), None)
        if index is None:
            raise ValueError(f"shop {self.runtime.name!r} has no customer {customer_id}")
        person = data.renderer.person(index)
        return {"id": customer_id, "email": person["email"], "phone": person["phone"]}

    def _orders_of(self, customer_id: int) -> list[int]:
        """Ids of the live orders whose customer is `customer_id`, as REST serves them now."""
        needle = b'"customer":{"id":' + str(customer_id).encode() + b","
        data = self.runtime.data
        with data.lock:
            return [record.id for record in data.collections["orders"].items
                    if not record.deleted and needle in data.rest_bytes("orders", record)]

    def _publish(self, topic: str, render: Callable[[], bytes], triggered_us: int,
                 record_key: tuple[str, int] | None) -> str | None:
        """An event for every address of `topic`, queued for the workers (lock held). Returns its id."""
        if topic in COMPLIANCE_TOPICS:
            targets = [(None, self.compliance_url, self.newest_version(), ())] if self.compliance_url else []
        else:
            targets = [(s, s.uri, s.api_version, s.include_fields) for s in self.subscriptions.values()
                       if s.topic == topic]
        if not targets:
            return None
        event = Event(next(self._event_numbers), topic, triggered_us, render, record_key)
        self._count("events", topic)
        if self._drawn(event, "lose", self.faults.lose_rate):
            self._count("lost", topic)
            return event.event_id
        duplicated = self._drawn(event, "duplicate", self.faults.duplicate_rate)
        for subscription, url, api_version, include_fields in targets:
            delivery = Delivery(self, event, subscription, url or "", api_version, include_fields)
            self._enqueue(delivery)
            for _ in range(self.faults.duplicate_copies if duplicated else 0):
                self._count("duplicates_sent", topic)
                self._enqueue(delivery.copy("duplicate"))
        return event.event_id

    # -- delivery -----------------------------------------------------------------------------------

    def _enqueue(self, delivery: Delivery, hold: bool = True) -> None:
        """Queue a new delivery now, or hold it for the reorder fault (lock held)."""
        self._open.add(delivery)
        self.pending += 1
        window = self.faults.reorder_window
        if hold and window > 0 and self._applies(delivery.event.topic):
            delivery.state = "held"
            self._held.append(delivery)
            if len(self._held) >= window:
                self._release_held()
            elif len(self._held) == 1:
                generation = self._hold_generation
                due = time.monotonic() + self.faults.reorder_hold_seconds
                self.service.schedule(due, functools.partial(self._hold_expired, generation))
            return
        delivery.state = "queued"
        self.service.schedule(time.monotonic(), delivery)

    def _hold_expired(self, generation: int) -> None:
        with self.lock:
            if generation == self._hold_generation:
                self._release_held()

    def _release_held(self) -> None:
        """Send the held deliveries in shuffled order (lock held)."""
        held = [delivery for delivery in self._held if delivery.state == "held"]
        self._held = []
        self._hold_generation += 1
        random.Random(f"{self.faults.seed}:reorder:{self._hold_generation}").shuffle(held)
        if len(held) > 1:
            self._counts["reordered"] += len(held)
        now = time.monotonic()
        for delivery in held:
            delivery.state = "queued"
            self.service.schedule(now, delivery)

    def attempt(self, delivery: Delivery) -> None:
        """One attempt of a delivery (a worker thread): POST, then count, retry or drop."""
        with self.lock:
            if delivery.state != "queued":
                return
            delivery.state = "in_flight"
            delivery.attempts += 1
            bad = self._drawn(delivery.event, f"signature:{delivery.kind}:{delivery.attempts}",
                              self.faults.bad_signature_rate)
        event = delivery.event
        body = delivery.body()
        secret = f"{self.secret}-not" if bad else self.secret
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Shopify-Topic": event.topic,
            "X-Shopify-Hmac-Sha256": sign(secret, body),
            "X-Shopify-Shop-Domain": f"{self.runtime.name}.myshopify.com",
            "X-Shopify-API-Version": delivery.api_version,
            "X-Shopify-Webhook-Id": delivery.webhook_id,
            "X-Shopify-Event-Id": event.event_id,
            "X-Shopify-Triggered-At": event.triggered_at,
        }
        status: int | None = None
        error: str | None = None
        try:
            status = post(delivery.url, body, headers, self.config.connect_timeout_seconds,
                          self.config.timeout_seconds)
        except (OSError, http.client.HTTPException) as failure:
            error = f"{type(failure).__name__}: {failure}"
        with self.lock:
            self._attempts.append({"event_id": event.event_id, "webhook_id": delivery.webhook_id,
                                   "topic": event.topic, "url": delivery.url, "attempt": delivery.attempts,
                                   "kind": delivery.kind, "bad_signature": bad, "status": status, "error": error,
                                   "at": time.time()})
            if bad:
                self._counts["bad_signatures_sent"] += 1
            if status is not None and 200 <= status < 300:
                self._delivered(delivery)
            else:
                self._failed(delivery)

    def _delivered(self, delivery: Delivery) -> None:
        self._count("delivered", delivery.event.topic)
        delivery.state = "done"
        self._close(delivery)
        event = delivery.event
        if delivery.kind != "original" or event.record_key is None or self.faults.stale_rate <= 0:
            return
        key = (delivery.url, *event.record_key)
        previous = self._last_delivered.get(key)
        if previous is not None and previous.event.number > event.number:
            return
        self._last_delivered[key] = delivery
        if previous is not None and self._drawn(event, "stale", self.faults.stale_rate):
            self._count("stale_sent", previous.event.topic)
            self._enqueue(previous.copy("stale"), hold=False)

    def _failed(self, delivery: Delivery) -> None:
        topic = delivery.event.topic
        self._count("failed_attempts", topic)
        delays = self.config.retry_delays_seconds
        if delivery.cancel_requested:
            delivery.state = "cancelled"
            self._count("cancelled", topic)
            self._close(delivery)
        elif delivery.attempts <= len(delays):
            delivery.state = "queued"
            self._counts["retries"] += 1
            due = time.monotonic() + delays[delivery.attempts - 1] / self.service.time_scale
            self.service.schedule(due, delivery)
        else:
            delivery.state = "done"
            self._count("dropped", topic)
            self._close(delivery)
            subscription = delivery.subscription
            if (self.config.remove_failing_subscriptions and subscription is not None
                    and subscription.number in self.subscriptions):
                self._counts["subscriptions_removed"] += 1
                self._remove(subscription)

    def _close(self, delivery: Delivery) -> None:
        """A delivery is finished (lock held): wake whoever waits for the queue to drain."""
        self._open.discard(delivery)
        self.pending -= 1
        if self.pending == 0:
            self.idle.notify_all()

    # -- faults, counters ---------------------------------------------------------------------------

    def set_faults(self, faults: WebhookFaults) -> None:
        """Apply these faults from the next event on (held deliveries are released if reordering stops)."""
        with self.lock:
            self.faults = faults
            if faults.reorder_window == 0 and self._held:
                self._release_held()

    def _applies(self, topic: str) -> bool:
        return not self.faults.topics or topic in self.faults.topics

    def _drawn(self, event: Event, kind: str, rate: float) -> bool:
        """A seeded draw per (event number, kind): the same seed gives the same faults."""
        if rate <= 0 or not self._applies(event.topic):
            return False
        return random.Random(f"{self.faults.seed}:{event.number}:{kind}").random() < rate

    def _count(self, name: str, topic: str) -> None:
        self._counts[name] += 1
        self._by_topic.setdefault(topic, Counter())[name] += 1

    def _now_us(self) -> int:
        return time.time_ns() // 1000

    def stats(self) -> dict[str, Any]:
        """Counters: events, delivered, failed_attempts, retries, dropped, lost, cancelled, duplicates_sent,
        stale_sent, bad_signatures_sent, reordered, subscriptions_removed, pending, subscriptions, by_topic."""
        names = ("events", "delivered", "failed_attempts", "retries", "dropped", "lost", "cancelled",
                 "duplicates_sent", "stale_sent", "bad_signatures_sent", "reordered", "subscriptions_removed")
        with self.lock:
            return {**{name: self._counts[name] for name in names}, "pending": self.pending,
                    "subscriptions": len(self.subscriptions),
                    "by_topic": {topic: dict(counts) for topic, counts in sorted(self._by_topic.items())}}

    def attempts(self) -> list[dict[str, Any]]:
        """The last attempts, oldest first: event_id, webhook_id, topic, url, attempt, kind, bad_signature,
        status (None when no answer), error, at (epoch seconds)."""
        with self.lock:
            return list(self._attempts)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued, held, in flight or waiting for a retry. Returns whether it happened."""
        with self.lock:
            return self.idle.wait_for(lambda: self.pending == 0, timeout)


def user_error(field_path: list[str], message: str) -> dict[str, Any]:
    """A UserError."""
    return {"field": field_path, "message": message}


class WebhookService:
    """Webhooks of every shop of one simulator: a schedule of due deliveries and the threads that send them."""

    def __init__(self, time_scale: float, cursors: Cursors,
                 shop_document: Callable[[ShopRuntime], dict[str, Any]]) -> None:
        self.time_scale = time_scale
        self.cursors = cursors
        self.shop_document = shop_document
        self._shops: dict[str, ShopWebhooks] = {}
        self._due: list[tuple[float, int, Delivery | Callable[[], None]]] = []
        self._order = itertools.count()
        self._numbers = itertools.count(1_342_789_218)
        self._wake = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def shop(self, runtime: ShopRuntime) -> ShopWebhooks:
        """The webhooks of a shop, created on first use (which starts listening to its changes)."""
        with self._wake:
            if runtime.name not in self._shops:
                self._shops[runtime.name] = ShopWebhooks(self, runtime)
            return self._shops[runtime.name]

    def bulk_created(self, runtime: ShopRuntime, operation: Any) -> None:
        """BulkService's listener: a shop's new bulk operation, watched for its bulk_operations/finish."""
        self.shop(runtime).watch_bulk(operation)

    def next_subscription_number(self) -> int:
        return next(self._numbers)

    def schedule(self, due: float, task: Delivery | Callable[[], None]) -> None:
        """Run `task` (a delivery attempt or a callable) once time.monotonic() reaches `due`."""
        with self._wake:
            heapq.heappush(self._due, (due, next(self._order), task))
            self._wake.notify()

    def start(self) -> None:
        """Start the delivery threads (deliveries due meanwhile go out now)."""
        with self._wake:
            self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"webhooks-{n}", daemon=True)
                         for n in range(WORKERS)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop the delivery threads; what is still due stays queued for a later start."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def _next(self) -> Delivery | Callable[[], None] | None:
        with self._wake:
            while not self._stopping:
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is not None and wait <= 0:
                    return heapq.heappop(self._due)[2]
                self._wake.wait(wait)
            return None

    def _work(self) -> None:
        while (task := self._next()) is not None:
            if isinstance(task, Delivery):
                task.owner.attempt(task)
            else:
                task()
