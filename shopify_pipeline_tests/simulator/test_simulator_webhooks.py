"""Webhooks: subscriptions over GraphQL, signed deliveries to a local receiver, retries, faults, compliance."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from shopify_pipeline.simulator import AuthConfig, ShopConfig, Simulator, WebhookConfig, WebhookFaults
from shopify_pipeline.simulator.config import WEBHOOK_RETRY_DELAYS

from .conftest import VERSION

TOKEN = "shpat_hooks"
HEADERS = ("X-Shopify-Topic", "X-Shopify-Hmac-Sha256", "X-Shopify-Shop-Domain", "X-Shopify-API-Version",
           "X-Shopify-Webhook-Id", "X-Shopify-Event-Id", "X-Shopify-Triggered-At")
FOUR_HOURS = 4 * 3600


@dataclass
class Received:
    """One POST as the receiver saw it: raw body, headers (names as sent), arrival time."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def header(self, name: str) -> str:
        return next(value for key, value in self.headers.items() if key.lower() == name.lower())

    @property
    def topic(self) -> str:
        return self.header("X-Shopify-Topic")

    @property
    def event_id(self) -> str:
        return self.header("X-Shopify-Event-Id")

    def document(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A webhook endpoint on 127.0.0.1 (stdlib http.server). Each POST is recorded, then answered by
    `respond(received)`: a status, or a number of seconds to sleep first as (seconds, status)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.respond: Callable[[Received], int | tuple[float, int]] = lambda _: 200
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received(self.path, dict(self.headers.items()), body, time.monotonic())
                with receiver.changed:
                    receiver.received.append(received)
                    receiver.changed.notify_all()
                answer = receiver.respond(received)
                if isinstance(answer, tuple):
                    time.sleep(answer[0])
                    answer = answer[1]
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
                """Quiet."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # http.server's backlog of 5 drops connections when the simulator's workers all connect at once.
            request_queue_size = 64

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str = "/webhooks") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first `count` deliveries, waiting for them if needed."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout), \
                f"{len(self.received)} deliveries arrived, {count} expected"
            return list(self.received[:count])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture()
def start() -> Iterator[Callable[..., Simulator]]:
    """Start a simulator with shop "acme" (and its config overrides); stopped after the test."""
    started: list[Simulator] = []

    def run(time_scale: float = 1.0, **overrides: Any) -> Simulator:
        config = {"orders": 40, "products": 10, "customers": 10, "seed": 5, "plan": "unlimited", **overrides}
        sim = Simulator([ShopConfig("acme", TOKEN, **config)], time_scale=time_scale).start()
        started.append(sim)
        return sim

    yield run
    for sim in started:
        sim.stop()


def expected_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def graphql(sim: Simulator, query: str, variables: dict[str, Any] | None = None,
            version: str = VERSION) -> dict[str, Any]:
    response = requests.post(f"{sim.shop_url('acme')}/admin/api/{version}/graphql.json",
                             json={"query": query, "variables": variables or {}},
                             headers={"X-Shopify-Access-Token": TOKEN}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def rest(sim: Simulator, path: str) -> dict[str, Any]:
    response = requests.get(f"{sim.shop_url('acme')}/admin/api/{VERSION}/{path}",
                            headers={"X-Shopify-Access-Token": TOKEN}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


CREATE = """
mutation Create($topic: WebhookSubscriptionTopic!, $input: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $input) {
    webhookSubscription {
      id legacyResourceId topic format uri callbackUrl includeFields createdAt updatedAt
      apiVersion { handle }
      endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } }
    }
    userErrors { field message }
  }
}"""
LIST = """
query List($first: Int!, $after: String, $topics: [WebhookSubscriptionTopic!]) {
  webhookSubscriptions(first: $first, after: $after, topics: $topics) {
    edges { cursor node { id topic uri } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}"""


# -- subscriptions -------------------------------------------------------------------------------------


def test_subscriptions_over_graphql_create_list_update_delete(start: Callable[..., Simulator],
                                                              receiver: Receiver) -> None:
    sim = start()
    created = graphql(sim, CREATE, {"topic": "ORDERS_CREATE", "input": {"uri": receiver.url(), "format": "JSON"}},
                      version="2026-07")
    payload = created["data"]["webhookSubscriptionCreate"]
    assert payload["userErrors"] == []
    subscription = payload["webhookSubscription"]
    assert subscription["id"] == f"gid://shopify/WebhookSubscription/{subscription['legacyResourceId']}"
    assert subscription["topic"] == "ORDERS_CREATE" and subscription["format"] == "JSON"
    assert subscription["uri"] == subscription["callbackUrl"] == receiver.url()
    assert subscription["endpoint"] == {"__typename": "WebhookHttpEndpoint", "callbackUrl": receiver.url()}
    # Payloads of a subscription made through the API follow the version of the request that made it.
    assert subscription["apiVersion"] == {"handle": "2026-07"}
    assert created["extensions"]["cost"]["requestedQueryCost"] == 10

    # The deprecated callbackUrl still works; the same topic and address again is Shopify's userError.
    second = graphql(sim, CREATE, {"topic": "ORDERS_UPDATED", "input": {"callbackUrl": receiver.url()}})
    assert second["data"]["webhookSubscriptionCreate"]["userErrors"] == []
    again = graphql(sim, CREATE, {"topic": "ORDERS_CREATE", "input": {"uri": receiver.url()}})
    assert again["data"]["webhookSubscriptionCreate"] == {
        "webhookSubscription": None,
        "userErrors": [{"field": ["webhookSubscription", "uri"],
                        "message": "Address for this topic has already been taken"}]}
    other_path = graphql(sim, CREATE, {"topic": "ORDERS_CREATE", "input": {"uri": receiver.url("/other")}})
    assert other_path["data"]["webhookSubscriptionCreate"]["userErrors"] == []

    first_page = graphql(sim, LIST, {"first": 2})["data"]["webhookSubscriptions"]
    assert [edge["node"]["topic"] for edge in first_page["edges"]] == ["ORDERS_CREATE", "ORDERS_UPDATED"]
    assert first_page["pageInfo"]["hasNextPage"] is True
    rest_page = graphql(sim, LIST, {"first": 2, "after": first_page["pageInfo"]["endCursor"]})
    rest_page = rest_page["data"]["webhookSubscriptions"]
    assert [edge["node"]["uri"] for edge in rest_page["edges"]] == [receiver.url("/other")]
    assert rest_page["pageInfo"] == {"hasNextPage": False, "hasPreviousPage": True,
                                     "endCursor": rest_page["edges"][0]["cursor"]}
    updated_only = graphql(sim, LIST, {"first": 10, "topics": ["ORDERS_UPDATED"]})["data"]["webhookSubscriptions"]
    assert [edge["node"]["topic"] for edge in updated_only["edges"]] == ["ORDERS_UPDATED"]
    assert [s["topic"] for s in sim.webhook_subscriptions("acme")] == ["ORDERS_CREATE", "ORDERS_UPDATED",
                                                                       "ORDERS_CREATE"]

    one = graphql(sim, "query($id: ID!) { webhookSubscription(id: $id) { id uri } }", {"id": subscription["id"]})
    assert one["data"]["webhookSubscription"] == {"id": subscription["id"], "uri": receiver.url()}

    update = """mutation($id: ID!, $input: WebhookSubscriptionInput!) {
      webhookSubscriptionUpdate(id: $id, webhookSubscription: $input) {
        webhookSubscription { id uri } userErrors { field message } } }"""
    moved = graphql(sim, update, {"id": subscription["id"], "input": {"uri": receiver.url("/moved")}})
    assert moved["data"]["webhookSubscriptionUpdate"] == {
        "webhookSubscription": {"id": subscription["id"], "uri": receiver.url("/moved")}, "userErrors": []}
    clash = graphql(sim, update, {"id": subscription["id"], "input": {"uri": receiver.url("/other")}})
    assert clash["data"]["webhookSubscriptionUpdate"]["userErrors"][0]["message"] == (
        "Address for this topic has already been taken")

    delete = """mutation($id: ID!) { webhookSubscriptionDelete(id: $id) {
      deletedWebhookSubscriptionId userErrors { field message } } }"""
    deleted = graphql(sim, delete, {"id": subscription["id"]})
    assert deleted["data"]["webhookSubscriptionDelete"] == {"deletedWebhookSubscriptionId": subscription["id"],
                                                            "userErrors": []}
    gone = graphql(sim, delete, {"id": subscription["id"]})
    assert gone["data"]["webhookSubscriptionDelete"] == {
        "deletedWebhookSubscriptionId": None,
        "userErrors": [{"field": ["id"], "message": "Webhook subscription does not exist"}]}
    assert len(sim.webhook_subscriptions("acme")) == 2


def test_subscription_addresses_and_topics_are_checked(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start()

    def create_errors(topic: str, values: dict[str, Any]) -> list[dict[str, Any]]:
        return graphql(sim, CREATE, {"topic": topic, "input": values})["data"]["webhookSubscriptionCreate"][
            "userErrors"]

    assert create_errors("ORDERS_CREATE", {"uri": "http://hooks.example.com/x"}) == [
        {"field": ["webhookSubscription", "uri"], "message": "Address protocol http:// is not supported"}]
    assert create_errors("ORDERS_CREATE", {"uri": ""}) == [
        {"field": ["webhookSubscription", "uri"], "message": "Address can't be blank"}]
    assert create_errors("ORDERS_CREATE", {"uri": "ftp://files.example.com"})[0]["message"] == (
        "Address protocol ftp:// is not supported")
    assert "HTTPS only" in create_errors("ORDERS_CREATE", {
        "uri": "arn:aws:events:us-east-1::event-source/aws.partner/shopify.com/1/source"})[0]["message"]
    assert create_errors("ORDERS_CREATE", {"uri": receiver.url(), "format": "XML"})[0]["field"] == [
        "webhookSubscription", "format"]
    # Compliance topics are app configuration: not in the API's enum, nor accepted by the helper.
    refused = graphql(sim, CREATE, {"topic": "SHOP_REDACT", "input": {"uri": receiver.url()}})
    assert "data" not in refused and "SHOP_REDACT" in refused["errors"][0]["message"]
    with pytest.raises(ValueError, match="compliance"):
        sim.subscribe("acme", "shop/redact", receiver.url())
    with pytest.raises(ValueError, match="http:// is not supported"):
        sim.subscribe("acme", "orders/create", "http://hooks.example.com/x")
    sim.subscribe("acme", "ORDERS_CREATE", receiver.url())
    with pytest.raises(ValueError, match="already been taken"):
        sim.subscribe("acme", "orders/create", receiver.url())
    assert sim.subscribe("acme", "orders/create", "https://hooks.example.com/x").startswith(
        "gid://shopify/WebhookSubscription/")


# -- deliveries --------------------------------------------------------------------------------------


def test_an_update_arrives_signed_with_shopifys_headers_and_the_rest_document(
        start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start()
    sim.subscribe("acme", "orders/updated", receiver.url(), api_version="2026-04")
    [order_id] = sim.update_records("acme", "orders", n=1, seed=3)
    document = rest(sim, f"orders/{order_id}.json")["order"]
    [delivery] = receiver.wait_for(1)

    assert delivery.path == "/webhooks"
    assert delivery.header("Content-Type") == "application/json"
    for name in HEADERS:
        assert delivery.header(name)
    assert delivery.topic == "orders/updated"
    assert delivery.header("X-Shopify-Shop-Domain") == "acme.myshopify.com"
    assert delivery.header("X-Shopify-API-Version") == "2026-04"
    assert delivery.header("X-Shopify-Hmac-Sha256") == expected_hmac("shpss_acme", delivery.body)
    assert sim.webhook_secret("acme") == "shpss_acme"
    assert delivery.header("X-Shopify-Webhook-Id") != delivery.event_id
    assert delivery.document() == document
    triggered = datetime.fromisoformat(delivery.header("X-Shopify-Triggered-At").replace("Z", "+00:00"))
    assert int(triggered.timestamp()) == int(datetime.fromisoformat(document["updated_at"]).timestamp())
    assert sim.wait_webhooks_idle("acme", 5)
    stats = sim.webhook_stats("acme")
    assert stats["events"] == stats["delivered"] == 1 and stats["pending"] == 0
    assert stats["by_topic"] == {"orders/updated": {"events": 1, "delivered": 1}}
    assert sim.stats("acme")["webhooks"]["delivered"] == 1


@pytest.mark.parametrize(("data_type", "topics"), [
    ("orders", ("orders/create", "orders/updated", "orders/delete")),
    ("products", ("products/create", "products/update", "products/delete")),
    ("customers", ("customers/create", "customers/update", "customers/delete")),
])
def test_create_update_and_delete_topics_and_payloads(start: Callable[..., Simulator], receiver: Receiver,
                                                      data_type: str, topics: tuple[str, ...]) -> None:
    sim = start()
    for topic in topics:
        sim.subscribe("acme", topic, receiver.url(f"/{topic}"))
    [created] = sim.create_records("acme", data_type, n=1, seed=1)
    created_document = rest(sim, f"{data_type}/{created}.json")[data_type[:-1]]
    receiver.wait_for(1)
    sim.update_records("acme", data_type, ids=[created])
    updated_document = rest(sim, f"{data_type}/{created}.json")[data_type[:-1]]
    receiver.wait_for(2)
    sim.delete_records("acme", data_type, ids=[created])
    create, update, delete = receiver.wait_for(3)

    assert [create.topic, update.topic, delete.topic] == list(topics)
    assert [create.path, update.path, delete.path] == [f"/{topic}" for topic in topics]
    assert create.document() == created_document
    assert update.document() == updated_document
    assert update.document()["updated_at"] > create.document()["updated_at"]
    if data_type == "customers":  # Shopify's customers/delete sample carries two more fields
        assert delete.document() == {"id": created, "tax_exemptions": [],
                                     "admin_graphql_api_id": f"gid://shopify/Customer/{created}"}
    else:
        assert delete.body == b'{"id":' + str(created).encode() + b"}"
    for delivery in (create, update, delete):
        assert delivery.header("X-Shopify-Hmac-Sha256") == expected_hmac("shpss_acme", delivery.body)
    assert len({create.event_id, update.event_id, delete.event_id}) == 3


def test_include_fields_trims_the_payload(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start()
    sim.subscribe("acme", "products/update", receiver.url(), include_fields=("id", "updated_at", "title"))
    [product_id] = sim.update_records("acme", "products", n=1)
    [delivery] = receiver.wait_for(1)
    assert set(delivery.document()) == {"id", "updated_at", "title"} and delivery.document()["id"] == product_id
    assert delivery.header("X-Shopify-Hmac-Sha256") == expected_hmac("shpss_acme", delivery.body)


def test_a_shop_with_auth_signs_with_the_apps_client_secret(start: Callable[..., Simulator],
                                                            receiver: Receiver) -> None:
    sim = start(auth=AuthConfig("client-id", "the-client-secret"))
    sim.subscribe("acme", "customers/update", receiver.url())
    sim.update_records("acme", "customers", n=1)
    [delivery] = receiver.wait_for(1)
    assert sim.webhook_secret("acme") == "the-client-secret"
    assert delivery.header("X-Shopify-Hmac-Sha256") == expected_hmac("the-client-secret", delivery.body)
    with pytest.raises(ValueError, match="client secret"):
        ShopConfig("x", "t", auth=AuthConfig("id", "one"), webhook_secret="another")
    own = ShopConfig("x", "t", webhook_secret="mine")
    assert own.app_secret == "mine"


def test_a_slow_receiver_never_blocks_a_mutation(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start()
    receiver.respond = lambda _: (1.5, 200)
    sim.subscribe("acme", "orders/updated", receiver.url())
    began = time.monotonic()
    for seed in range(5):
        sim.update_records("acme", "orders", n=2, seed=seed)
    assert time.monotonic() - began < 0.5
    assert len(receiver.wait_for(10, timeout=10)) == 10
    assert sim.wait_webhooks_idle("acme", 10)


def test_no_subscription_no_event(start: Callable[..., Simulator]) -> None:
    sim = start()
    sim.update_records("acme", "orders", n=5)
    assert sim.webhook_stats("acme")["events"] == 0 and sim.wait_webhooks_idle("acme", 0.1)


# -- retries -----------------------------------------------------------------------------------------


def test_failed_delivery_is_retried_8_times_over_4_hours_time_scaled_then_dropped(
        start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start(time_scale=FOUR_HOURS)  # Shopify's 4 hours last one real second
    receiver.respond = lambda _: 503
    sim.subscribe("acme", "orders/updated", receiver.url())
    sim.update_records("acme", "orders", n=1)
    attempts = receiver.wait_for(9, timeout=10)
    assert sim.wait_webhooks_idle("acme", 5)

    first = attempts[0]
    for attempt in attempts[1:]:
        for name in ("X-Shopify-Event-Id", "X-Shopify-Webhook-Id", "X-Shopify-Triggered-At",
                     "X-Shopify-Hmac-Sha256"):
            assert attempt.header(name) == first.header(name)
        assert attempt.body == first.body
    gaps = [later.at - earlier.at for earlier, later in zip(attempts, attempts[1:], strict=False)]
    delays = [delay / FOUR_HOURS for delay in WEBHOOK_RETRY_DELAYS]
    assert len(delays) == 8 and sum(WEBHOOK_RETRY_DELAYS) == pytest.approx(FOUR_HOURS)
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay * 0.95 <= gap < delay + 0.5
    assert attempts[-1].at - first.at >= 0.95

    stats = sim.webhook_stats("acme")
    assert (stats["failed_attempts"], stats["retries"], stats["dropped"], stats["delivered"]) == (9, 8, 1, 0)
    assert stats["by_topic"]["orders/updated"]["dropped"] == 1
    # A subscription made through the API is removed once it has dropped a delivery, as Shopify does.
    assert stats["subscriptions_removed"] == 1 and sim.webhook_subscriptions("acme") == []
    time.sleep(0.3)
    assert len(receiver.received) == 9
    assert [a["status"] for a in sim.webhook_attempts("acme")] == [503] * 9


def test_a_retry_that_succeeds_and_a_subscription_kept_on_request(start: Callable[..., Simulator],
                                                                  receiver: Receiver) -> None:
    sim = start(time_scale=FOUR_HOURS, webhooks=WebhookConfig(remove_failing_subscriptions=False))
    answers = iter([500, 502, 404])
    receiver.respond = lambda _: next(answers, 200)
    sim.subscribe("acme", "orders/updated", receiver.url())
    sim.update_records("acme", "orders", n=1)
    attempts = receiver.wait_for(4)
    assert sim.wait_webhooks_idle("acme", 5)
    assert len({a.event_id for a in attempts}) == 1
    stats = sim.webhook_stats("acme")
    assert (stats["delivered"], stats["failed_attempts"], stats["dropped"]) == (1, 3, 0)

    receiver.respond = lambda _: 500
    sim.update_records("acme", "orders", n=1, seed=9)
    assert sim.wait_webhooks_idle("acme", 5)
    assert sim.webhook_stats("acme")["dropped"] == 1
    assert len(sim.webhook_subscriptions("acme")) == 1


def test_no_answer_in_time_and_no_listener_are_failures(start: Callable[..., Simulator],
                                                        receiver: Receiver) -> None:
    sim = start(time_scale=FOUR_HOURS, webhooks=WebhookConfig(timeout_seconds=0.3))
    answers = iter([(1.0, 200)])
    receiver.respond = lambda _: next(answers, 200)
    sim.subscribe("acme", "orders/updated", receiver.url())
    sim.update_records("acme", "orders", n=1)
    receiver.wait_for(2)
    assert sim.wait_webhooks_idle("acme", 5)
    first, second = sim.webhook_attempts("acme")
    assert first["status"] is None and "timed out" in first["error"]
    assert second["status"] == 200

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    sim.subscribe("acme", "orders/delete", f"http://127.0.0.1:{closed_port}/nobody")
    sim.delete_records("acme", "orders", n=1)
    assert sim.wait_webhooks_idle("acme", 5)
    refused = [a for a in sim.webhook_attempts("acme") if a["topic"] == "orders/delete"]
    assert len(refused) == 9 and all("ConnectionRefused" in a["error"] for a in refused)
    assert sim.webhook_stats("acme")["by_topic"]["orders/delete"]["dropped"] == 1


def test_deleting_a_subscription_cancels_its_retries(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start(time_scale=1.0)  # the first retry is a real minute away
    receiver.respond = lambda _: 500
    subscription = sim.subscribe("acme", "orders/updated", receiver.url())
    sim.update_records("acme", "orders", n=2)
    receiver.wait_for(2)
    assert not sim.wait_webhooks_idle("acme", 0.3)
    assert sim.webhook_stats("acme")["pending"] == 2
    assert sim.unsubscribe("acme", subscription)
    assert sim.wait_webhooks_idle("acme", 1)
    assert sim.webhook_stats("acme")["cancelled"] == 2
    assert not sim.unsubscribe("acme", subscription)


# -- faults --------------------------------------------------------------------------------------------


def test_duplicates_carry_the_same_event_and_webhook_ids(start: Callable[..., Simulator],
                                                         receiver: Receiver) -> None:
    sim = start(webhooks=WebhookConfig(faults=WebhookFaults(duplicate_rate=1.0, duplicate_copies=2)))
    sim.subscribe("acme", "orders/updated", receiver.url())
    sim.update_records("acme", "orders", n=2)
    deliveries = receiver.wait_for(6)
    assert sim.wait_webhooks_idle("acme", 5)
    by_event: dict[str, list[Received]] = {}
    for delivery in deliveries:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    assert sorted(len(copies) for copies in by_event.values()) == [3, 3]
    for copies in by_event.values():
        assert len({(c.header("X-Shopify-Webhook-Id"), c.header("X-Shopify-Triggered-At"), c.body)
                    for c in copies}) == 1
    assert sim.webhook_stats("acme")["duplicates_sent"] == 4


def test_out_of_order_delivery_shuffles_a_window(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start(webhooks=WebhookConfig(faults=WebhookFaults(seed=2, reorder_window=8)))
    sim.subscribe("acme", "orders/updated", receiver.url())
    order_ids = [sim.update_records("acme", "orders", n=1, seed=seed)[0] for seed in range(8)]
    assert len(set(order_ids)) == 8
    arrived = [delivery.document()["id"] for delivery in receiver.wait_for(8)]
    assert sorted(arrived) == sorted(order_ids) and arrived != order_ids
    assert sim.webhook_stats("acme")["reordered"] == 8

    # Fewer events than the window are released after the hold time.
    sim.set_webhook_faults("acme", WebhookFaults(reorder_window=50, reorder_hold_seconds=0.3))
    sim.update_records("acme", "orders", n=3, seed=99)
    began = time.monotonic()
    receiver.wait_for(11, timeout=5)
    assert time.monotonic() - began >= 0.25
    assert sim.wait_webhooks_idle("acme", 5)


def test_stale_retries_bring_an_old_version_after_a_newer_one(start: Callable[..., Simulator],
                                                              receiver: Receiver) -> None:
    sim = start(webhooks=WebhookConfig(faults=WebhookFaults(stale_rate=1.0)))
    for topic in ("orders/updated", "orders/delete"):
        sim.subscribe("acme", topic, receiver.url())
    [order_id] = sim.update_records("acme", "orders", n=1)
    first = receiver.wait_for(1)[0]
    sim.update_records("acme", "orders", ids=[order_id])
    newer, stale = receiver.wait_for(3)[1:]
    assert newer.document()["updated_at"] > first.document()["updated_at"]
    assert stale.event_id == first.event_id and stale.body == first.body
    assert stale.header("X-Shopify-Triggered-At") == first.header("X-Shopify-Triggered-At")
    assert stale.header("X-Shopify-Triggered-At") < newer.header("X-Shopify-Triggered-At")

    # After a delete, an old update arrives again: a receiver must not bring the record back.
    sim.delete_records("acme", "orders", ids=[order_id])
    deleted, resurrecting = receiver.wait_for(5)[3:]
    assert deleted.topic == "orders/delete"
    assert resurrecting.topic == "orders/updated" and resurrecting.event_id == newer.event_id
    assert sim.wait_webhooks_idle("acme", 5)
    assert sim.webhook_stats("acme")["stale_sent"] == 2


def test_bad_signatures_are_refused_retried_and_counted(start: Callable[..., Simulator],
                                                        receiver: Receiver) -> None:
    faults = WebhookFaults(seed=1, bad_signature_rate=0.5, topics=("orders/updated",))
    sim = start(time_scale=FOUR_HOURS, webhooks=WebhookConfig(faults=faults))

    def verify(received: Received) -> int:
        good = hmac.compare_digest(received.header("X-Shopify-Hmac-Sha256"), expected_hmac("shpss_acme", received.body))
        return 200 if good else 401

    receiver.respond = verify
    sim.subscribe("acme", "orders/updated", receiver.url())
    sim.subscribe("acme", "orders/delete", receiver.url())
    sim.update_records("acme", "orders", n=6)
    sim.delete_records("acme", "orders", n=3)
    assert sim.wait_webhooks_idle("acme", 10)
    attempts = sim.webhook_attempts("acme")
    bad = [a for a in attempts if a["bad_signature"]]
    assert bad and all(a["status"] == 401 and a["topic"] == "orders/updated" for a in bad)
    stats = sim.webhook_stats("acme")
    assert stats["bad_signatures_sent"] == len(bad) == stats["failed_attempts"]
    assert stats["delivered"] == 9 and stats["dropped"] == 0

    sim.set_webhook_faults("acme", WebhookFaults(bad_signature_rate=1.0))
    sim.update_records("acme", "orders", n=1, seed=4)
    assert sim.wait_webhooks_idle("acme", 10)
    assert sim.webhook_stats("acme")["dropped"] == 1


def test_lost_events_never_arrive(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start(webhooks=WebhookConfig(faults=WebhookFaults(lose_rate=1.0)))
    sim.subscribe("acme", "orders/updated", receiver.url())
    sim.update_records("acme", "orders", n=4)
    assert sim.wait_webhooks_idle("acme", 2)
    time.sleep(0.2)
    assert receiver.received == []
    assert sim.webhook_stats("acme")["lost"] == sim.webhook_stats("acme")["events"] == 4


def test_fault_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        WebhookFaults(duplicate_rate=2.0)
    with pytest.raises(ValueError, match="unknown webhook topics"):
        WebhookFaults(topics=("orders/update",))
    with pytest.raises(ValueError, match="unknown webhook fault fields"):
        WebhookFaults.from_dict({"dupes": 1})
    config = ShopConfig.from_dict({"name": "a", "token": "t", "compliance_webhook_url": "https://c.example/x",
                                   "webhooks": {"timeout_seconds": 2, "retry_delays_seconds": [1, 2],
                                                "faults": {"stale_rate": 0.5, "topics": ["orders/delete"]}}})
    assert config.webhooks.retry_delays_seconds == (1, 2)
    assert config.webhooks.faults == WebhookFaults(stale_rate=0.5, topics=("orders/delete",))


# -- uninstall and compliance --------------------------------------------------------------------------


def test_app_uninstalled_carries_the_shop(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start()
    shop = rest(sim, "shop.json")["shop"]
    assert sim.trigger_app_uninstalled("acme") is None
    sim.subscribe("acme", "APP_UNINSTALLED", receiver.url())
    event_id = sim.trigger_app_uninstalled("acme")
    [delivery] = receiver.wait_for(1)
    assert delivery.topic == "app/uninstalled" and delivery.event_id == event_id
    assert delivery.document() == shop
    # Shopify revokes the app's token with the uninstall; a reinstall brings it back.
    refused = requests.get(f"{sim.shop_url('acme')}/admin/api/{VERSION}/shop.json",
                           headers={"X-Shopify-Access-Token": TOKEN}, timeout=10)
    assert refused.status_code == 401
    sim.reinstall("acme")
    assert rest(sim, "shop.json")["shop"] == shop


def test_compliance_webhooks_go_to_the_apps_compliance_url(start: Callable[..., Simulator],
                                                           receiver: Receiver) -> None:
    sim = start(orders=200, customers=10, compliance_webhook_url=receiver.url("/compliance"))
    shop = rest(sim, "shop.json")["shop"]
    customer = rest(sim, "customers.json?limit=1")["customers"][0]
    orders = [o for o in rest(sim, "orders.json?status=any&limit=250")["orders"]
              if o["customer"] and o["customer"]["id"] == customer["id"]]
    assert orders

    redact_id = sim.trigger_customers_redact("acme", customer["id"])
    request_id = sim.trigger_customers_data_request("acme", customer["id"], orders_requested=[orders[0]["id"]])
    shop_id = sim.trigger_shop_redact("acme")
    deliveries = {d.topic: d for d in receiver.wait_for(3)}
    redact, data_request, shop_redact = (deliveries["customers/redact"], deliveries["customers/data_request"],
                                         deliveries["shop/redact"])
    assert all(d.path == "/compliance" for d in deliveries.values())
    assert [redact.event_id, data_request.event_id, shop_redact.event_id] == [redact_id, request_id, shop_id]
    person = {"id": customer["id"], "email": customer["email"], "phone": customer["phone"]}
    assert redact.document() == {"shop_id": shop["id"], "shop_domain": "acme.myshopify.com", "customer": person,
                                 "orders_to_redact": sorted(o["id"] for o in orders)}
    assert list(redact.document()) == ["shop_id", "shop_domain", "customer", "orders_to_redact"]
    assert data_request.document() == {"shop_id": shop["id"], "shop_domain": "acme.myshopify.com",
                                       "orders_requested": [orders[0]["id"]], "customer": person,
                                       "data_request": {"id": 9999}}
    assert shop_redact.document() == {"shop_id": shop["id"], "shop_domain": "acme.myshopify.com"}
    for delivery in deliveries.values():
        assert delivery.header("X-Shopify-Hmac-Sha256") == expected_hmac("shpss_acme", delivery.body)
        assert delivery.header("X-Shopify-API-Version") == "2026-10"

    sim.set_compliance_webhook_url("acme", None)
    assert sim.trigger_shop_redact("acme") is None
    with pytest.raises(ValueError, match="no customer"):
        sim.trigger_customers_redact("acme", 42)


# -- admin API ------------------------------------------------------------------------------------------


def test_admin_api_for_other_processes(start: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = start(time_scale=FOUR_HOURS)
    admin = f"{sim.base_url}/_simulator/shops/acme"
    made = requests.post(f"{admin}/webhook_subscribe", json={"topic": "orders/updated", "url": receiver.url()},
                         timeout=10).json()
    assert made["id"].startswith("gid://shopify/WebhookSubscription/")
    faults = requests.post(f"{admin}/webhook_faults", json={"duplicate_rate": 1.0}, timeout=10).json()
    assert faults["duplicate_rate"] == 1.0
    assert requests.post(f"{admin}/webhook_faults", json={"nope": 1}, timeout=10).status_code == 400
    requests.post(f"{admin}/records/orders/update", json={"n": 1}, timeout=10)
    assert requests.post(f"{admin}/webhook_idle", json={"timeout": 5}, timeout=10).json() == {"idle": True}
    assert len(receiver.wait_for(2)) == 2
    requests.post(f"{admin}/webhook_compliance_url", json={"url": receiver.url("/c")}, timeout=10)
    triggered = requests.post(f"{admin}/webhook_trigger", json={"topic": "shop/redact"}, timeout=10).json()
    assert triggered["event_id"]
    listing = requests.get(f"{admin}/webhooks", timeout=10).json()
    assert [s["id"] for s in listing["subscriptions"]] == [made["id"]]
    assert listing["stats"]["duplicates_sent"] >= 1
    attempts = requests.get(f"{admin}/webhook_attempts", timeout=10).json()["attempts"]
    assert attempts and attempts[0]["topic"] == "orders/updated"
    assert requests.post(f"{admin}/webhook_unsubscribe", json={"id": made["id"]}, timeout=10).json() == {
        "deleted": True}
