"""Webhooks end to end: the simulator delivers signed webhooks (with duplicates, reordering, stale retries and
bad signatures on demand) to our webhook server, which applies them to DynamoDB Local."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import pytest
import requests

from shopify_pipeline.settings import DATA_TYPES, ShopifySettings
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.simulator.config import WebhookFaults
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline.webhooks.handler import RECORD_TOPICS, WebhookHandler
from shopify_pipeline.webhooks.server import WebhookServer
from shopify_pipeline.webhooks.subscriptions import TOPICS
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.sync.conftest import stored

SHOPIFY = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=5.0)


@pytest.fixture(scope="module")
def sim():
    shop = ShopConfig("hooks", "shpat_hooks", orders=60, products=12, customers=25, seed=41, plan="plus")
    with Simulator([shop], time_scale=2000) as running:  # Shopify's 4 hours of retries in seconds
        yield running


@pytest.fixture
def service(settings, sim):
    sim.set_webhook_faults("hooks", WebhookFaults())
    sim.reinstall("hooks")  # an earlier test may have uninstalled the app
    svc = SyncService(SyncEngine(settings, SHOPIFY, SyncOptions(slices=1, bulk_threshold=None)))
    svc.add_connection("hook-user", sim.shop_url("hooks"), "literal:shpat_hooks")
    assert svc.sync("hook-user", "initial").success
    return svc


@pytest.fixture
def server(service, sim):
    with WebhookServer(WebhookHandler(service.engine, sim.webhook_secret("hooks"))) as running:
        for topic in (*RECORD_TOPICS, "app/uninstalled"):
            sim.subscribe("hooks", topic, running.url)
        yield running
    for subscription in sim.webhook_subscriptions("hooks"):
        sim.unsubscribe("hooks", subscription["id"])


def _settle(sim, server, timeout: float = 120) -> None:
    """Shopify has delivered everything, and our server has applied everything it accepted."""
    assert sim.wait_webhooks_idle("hooks", timeout=timeout)
    assert server.wait_idle(timeout)


def _equal(service, sim) -> None:
    for data_type in DATA_TYPES:
        assert stored(service, "hook-user", data_type) == graphql_truth(sim, "hooks", data_type), data_type


def test_a_storm_of_duplicated_reordered_stale_and_missigned_deliveries_ends_equal_to_shopify(service, sim, server):
    sim.set_webhook_faults("hooks", WebhookFaults(seed=5, duplicate_rate=0.3, duplicate_copies=2, reorder_window=6,
                                                  reorder_hold_seconds=0.3, stale_rate=0.3, bad_signature_rate=0.2))
    sim.update_records("hooks", "orders", n=25, seed=1)
    sim.update_records("hooks", "orders", n=25, seed=2)  # some twice: stale retries of the first version
    sim.update_records("hooks", "customers", n=10, seed=3)
    sim.create_records("hooks", "customers", n=4, seed=4)
    deleted = sim.delete_records("hooks", "orders", n=6, seed=5)
    sim.update_records("hooks", "products", n=5, seed=6)
    _settle(sim, server)
    stats = sim.webhook_stats("hooks")
    assert stats["duplicates_sent"] > 0 and stats["stale_sent"] > 0 and stats["bad_signatures_sent"] > 0, stats
    assert stats["dropped"] == 0, stats
    _equal(service, sim)
    assert not set(deleted) & set(stored(service, "hook-user", "orders"))
    counts = service.engine.dynamodb.get_item(TableName=service.engine.settings.tables.checkpoints,
                                              Key={"userId": {"S": "hook-user"}, "syncType": {"S": "webhook_status"}})
    counts = {name: value for name, value in counts["Item"].items()}
    assert int(counts["applied_orders"]["N"]) > 0 and int(counts["duplicate_orders"]["N"]) > 0
    # The missigned deliveries (401) are counted: a wrong app secret would show in the webhooks_applied check.
    assert int(counts["rejected_orders"]["N"]) >= 1 and float(counts["lagSeconds_orders"]["N"]) >= 0
    # The next daily sync (the reconciliation) finds nothing to change.
    assert service.sync("hook-user", "daily").success
    _equal(service, sim)


def test_a_server_restart_mid_stream_loses_nothing(service, sim, server, settings):
    port = int(server.url.rsplit(":", 1)[1])
    server.__exit__(None, None, None)  # down: deliveries fail and Shopify retries them
    sim.update_records("hooks", "orders", n=10, seed=11)
    deleted = sim.delete_records("hooks", "customers", n=3, seed=12)
    with WebhookServer(WebhookHandler(service.engine, sim.webhook_secret("hooks")), port=port) as again:
        _settle(sim, again)
    assert sim.webhook_stats("hooks")["failed_attempts"] > 0
    _equal(service, sim)
    assert not set(deleted) & set(stored(service, "hook-user", "customers"))


def test_a_late_update_of_a_deleted_record_does_not_bring_it_back(service, sim, server):
    handler = server.handler
    (gone,) = sim.delete_records("hooks", "orders", n=1, seed=21)
    _settle(sim, server)
    assert gone not in stored(service, "hook-user", "orders")
    outcome = handler.handle(_delivery(sim, "orders/updated", {"id": gone}, "late-update-1"))
    assert outcome.status == 200 and outcome.result == "stale"
    assert gone not in stored(service, "hook-user", "orders")


def test_a_bad_signature_is_refused_before_anything_is_read_and_unknown_shops_are_404(service, sim, server):
    body = json.dumps({"id": 1}).encode()
    headers = {"X-Shopify-Topic": "orders/updated", "X-Shopify-Shop-Domain": "hooks.myshopify.com",
               "X-Shopify-Event-Id": "e-bad", "X-Shopify-Hmac-Sha256": "AAAA" + _sign(sim, body)[4:]}
    assert requests.post(server.url, data=body, headers=headers, timeout=5).status_code == 401
    headers["X-Shopify-Hmac-Sha256"] = _sign(sim, body)
    headers["X-Shopify-Shop-Domain"] = "stranger.myshopify.com"
    assert requests.post(server.url, data=body, headers=headers, timeout=5).status_code == 404


def test_a_duplicate_event_is_applied_once(service, sim, server):
    (order,) = sim.update_records("hooks", "orders", n=1, seed=31)
    _settle(sim, server)
    first = server.handler.handle(_delivery(sim, "orders/updated", {"id": order}, "dup-1"))
    again = server.handler.handle(_delivery(sim, "orders/updated", {"id": order}, "dup-1"))
    assert (first.result, again.result) == ("applied", "duplicate")


def _sign(sim, body: bytes) -> str:
    return base64.b64encode(hmac.new(sim.webhook_secret("hooks").encode(), body, hashlib.sha256).digest()).decode()


def _delivery(sim, topic: str, payload: dict, event_id: str):
    from shopify_pipeline.webhooks.handler import Delivery

    body = json.dumps(payload).encode()
    return Delivery(topic, "hooks.myshopify.com", event_id, "2026-11-29T00:00:00.000000Z", body, _sign(sim, body))


def test_app_uninstalled_marks_the_connection_disconnected_and_its_data_is_kept(service, sim, server):
    before = stored(service, "hook-user", "orders")
    assert sim.trigger_app_uninstalled("hooks")
    _settle(sim, server)
    assert service.engine.connections.get("hook-user").disconnected_at
    assert stored(service, "hook-user", "orders") == before


# Compliance (mandatory webhooks, sent to the app's compliance URL) -----------------------------------------


@pytest.fixture
def compliance(sim, server):
    sim.set_compliance_webhook_url("hooks", server.url)
    yield server
    sim.set_compliance_webhook_url("hooks", None)


def _a_customer_with_orders(service) -> tuple[int, list[int]]:
    by_customer: dict[int, list[int]] = {}
    customers = stored(service, "hook-user", "customers")
    for order_id, order in stored(service, "hook-user", "orders").items():
        if order.get("customer") and int(order["customer"]["legacyResourceId"]) in customers:
            by_customer.setdefault(int(order["customer"]["legacyResourceId"]), []).append(order_id)
    customer = max(by_customer, key=lambda c: len(by_customer[c]))
    return customer, sorted(by_customer[customer])


def test_customers_redact_deletes_the_customer_and_blanks_their_orders(service, sim, compliance, caplog):
    customer, orders = _a_customer_with_orders(service)
    email = stored(service, "hook-user", "customers")[customer].get("email")
    assert sim.trigger_customers_redact("hooks", customer, orders)
    _settle(sim, compliance)
    assert customer not in stored(service, "hook-user", "customers")
    after = stored(service, "hook-user", "orders")
    for order_id in orders:
        assert after[order_id]["email"] is None and after[order_id]["customer"] is None
    items = service.engine.dynamodb.query(
        TableName=service.engine.settings.tables.orders, KeyConditionExpression="userId = :u",
        ExpressionAttributeValues={":u": {"S": "hook-user"}})["Items"]
    assert not [i for i in items if int(i["id"]["N"]) in orders and "email" in i]  # the query attribute too
    assert email and email not in caplog.text  # logged with ids only
    # A late update of the redacted customer does not bring them back.
    outcome = server_handler(compliance).handle(_delivery(sim, "customers/update", {"id": customer}, "late-c"))
    assert outcome.result == "stale" and customer not in stored(service, "hook-user", "customers")


def test_customers_data_request_writes_their_stored_data_for_the_merchant(service, sim, compliance, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("SHOPIFY_DATA_REQUEST_DIR", str(tmp_path))
    customer, orders = _a_customer_with_orders(service)
    assert sim.trigger_customers_data_request("hooks", customer, orders)
    _settle(sim, compliance)
    (exported,) = tmp_path.glob(f"hook-user-customer-{customer}-request-*.json")
    data = json.loads(exported.read_text())
    assert data["customer"] == stored(service, "hook-user", "customers")[customer]
    assert sorted(int(o["legacyResourceId"]) for o in data["orders"]) == orders
    assert oct(exported.stat().st_mode & 0o777) == "0o600"


def test_shop_redact_deletes_every_item_of_the_shop(service, sim, compliance):
    settings = service.engine.settings
    assert service.sync("hook-user", "daily").success
    assert sim.trigger_app_uninstalled("hooks")  # Shopify sends shop/redact 48 hours after an uninstall
    _settle(sim, compliance)
    assert sim.trigger_shop_redact("hooks")
    _settle(sim, compliance)
    client = service.engine.dynamodb
    for table in (settings.tables.orders, settings.tables.products, settings.tables.customers,
                  settings.tables.checkpoints):
        left = client.query(TableName=table, KeyConditionExpression="userId = :u",
                            ExpressionAttributeValues={":u": {"S": "hook-user"}})["Items"]
        assert left == [], table
    connection = client.get_item(TableName=settings.tables.connections, Key={"userId": {"S": "hook-user"}})
    assert connection.get("Item") is None
    assert client.scan(TableName=settings.tables.webhook_inbox)["Items"] == []  # its waiting events too


def server_handler(server):
    return server.handler


def test_webhooks_subscribe_registers_every_topic_once(service, sim, settings):
    address = "https://hooks.example.com/shopify"
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1"}
    command = [sys.executable, "-m", "shopify_pipeline.cli", "webhooks", "subscribe", "--user", "hook-user",
               "--address", address, "--json"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert len(json.loads(first.stdout)["created"]) == len(TOPICS) and json.loads(again.stdout)["created"] == []
    mine = [s for s in sim.webhook_subscriptions("hooks") if s["uri"] == address]
    assert sorted(s["topic"] for s in mine) == sorted(TOPICS)
    for subscription in mine:
        sim.unsubscribe("hooks", subscription["id"])


# The Lambda door --------------------------------------------------------------------------------------------


@pytest.fixture
def lambda_env(settings, sim, monkeypatch):
    from shopify_pipeline.webhooks import aws_lambda

    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    for name, value in {"AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
                        "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1",
                        "SHOPIFY_APP_SECRET_REF": f"literal:{sim.webhook_secret('hooks')}"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(aws_lambda, "_handler", None)  # a new container
    monkeypatch.setattr(aws_lambda, "_inbox", None)
    yield aws_lambda.handler
    monkeypatch.setattr(aws_lambda, "_handler", None)
    monkeypatch.setattr(aws_lambda, "_inbox", None)


def _inbox_stream(settings) -> list[dict]:
    """What DynamoDB Local's stream of the inbox table holds, as Lambda's event source mapping passes it."""
    import boto3

    streams = boto3.client("dynamodbstreams", endpoint_url=settings.dynamodb_endpoint_url,
                           region_name=settings.aws_region, aws_access_key_id="local", aws_secret_access_key="local")
    arn = streams.list_streams(TableName=settings.tables.webhook_inbox)["Streams"][0]["StreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator)
            records.extend({**record, "eventSource": "aws:dynamodb"} for record in page["Records"])
            iterator = page.get("NextShardIterator") if page["Records"] else None
    return records


def _headers(sim, topic: str, body: bytes, event_id: str) -> dict:
    return {"x-shopify-topic": topic, "x-shopify-shop-domain": "hooks.myshopify.com", "x-shopify-event-id": event_id,
            "x-shopify-triggered-at": "2026-11-29T00:00:00.000000Z", "x-shopify-hmac-sha256": _sign(sim, body),
            "content-type": "application/json"}


def test_the_lambda_takes_a_function_url_invocation_with_its_hmac(service, sim, lambda_env):
    (order,) = sim.update_records("hooks", "orders", n=1, seed=51)
    body = json.dumps({"id": order}).encode()
    event = {"version": "2.0", "rawPath": "/", "headers": _headers(sim, "orders/updated", body, "lambda-1"),
             "requestContext": {"http": {"method": "POST"}}, "isBase64Encoded": True,
             "body": base64.b64encode(body).decode()}
    assert lambda_env(event, None)["statusCode"] == 200  # queued in the inbox: nothing read from Shopify yet
    assert stored(service, "hook-user", "orders")[order] != graphql_truth(sim, "hooks", "orders")[order]
    # The inbox table's stream invokes the Lambda again, which applies the event and empties the inbox.
    records = _inbox_stream(service.engine.settings)
    assert lambda_env({"Records": records}, None) == {"batchItemFailures": []}
    assert stored(service, "hook-user", "orders")[order] == graphql_truth(sim, "hooks", "orders")[order]
    assert service.engine.dynamodb.scan(TableName=service.engine.settings.tables.webhook_inbox)["Items"] == []
    # The delete that emptied it reaches the Lambda too, and changes nothing.
    assert lambda_env({"Records": _inbox_stream(service.engine.settings)}, None) == {"batchItemFailures": []}
    forged = {**event, "headers": {**event["headers"], "x-shopify-hmac-sha256": _sign(sim, b"other")}}
    assert lambda_env(forged, None)["statusCode"] == 401


def test_the_lambda_takes_eventbridge_events_through_sqs_and_reports_only_failures(service, sim, lambda_env):
    (order,) = sim.update_records("hooks", "orders", n=1, seed=52)
    (gone,) = sim.delete_records("hooks", "customers", n=1, seed=53)

    def message(number: int, topic: str, payload: dict) -> dict:
        detail = {"payload": payload, "metadata": {"X-Shopify-Topic": topic, "X-Shopify-Event-Id": f"eb-{number}",
                                                   "X-Shopify-Shop-Domain": "hooks.myshopify.com",
                                                   "X-Shopify-Triggered-At": "2026-11-29T00:00:00.000000Z"}}
        event = {"version": "0", "id": f"e{number}", "detail-type": "shopifyWebhook",
                 "source": "aws.partner/shopify.com/1/pipeline", "detail": detail}
        return {"messageId": f"m{number}", "body": json.dumps(event)}

    answer = lambda_env({"Records": [message(1, "orders/updated", {"id": order}),
                                     message(2, "customers/delete", {"id": gone})]}, None)
    assert answer == {"batchItemFailures": []}
    assert stored(service, "hook-user", "orders")[order] == graphql_truth(sim, "hooks", "orders")[order]
    assert gone not in stored(service, "hook-user", "customers")


# Hostile and unlucky cases (review of issue #15) ---------------------------------------------------------


def test_a_signed_body_sent_again_under_another_topic_deletes_or_erases_nothing(service, sim, server):
    # Shopify's HMAC covers the body, not the topic header: a captured {"id": X} replayed as a delete, a
    # customers/redact or a shop/redact must not act.
    order = sorted(stored(service, "hook-user", "orders"))[0]
    handler = server.handler
    before = stored(service, "hook-user", "orders")
    as_delete = handler.handle(_delivery(sim, "orders/delete", {"id": order}, "swap-1"))
    assert (as_delete.status, as_delete.result) == (200, "stale")  # Shopify still has it
    for topic in ("shop/redact", "customers/redact", "customers/data_request"):
        assert handler.handle(_delivery(sim, topic, {"id": order}, f"swap-{topic}")).status == 400
    assert stored(service, "hook-user", "orders") == before
    # Even a well-formed shop/redact erases nothing while the app is installed.
    body = {"shop_id": 1, "shop_domain": "hooks.myshopify.com"}
    assert handler.handle(_delivery(sim, "shop/redact", body, "swap-shop")).result == "stale"
    assert stored(service, "hook-user", "orders") == before


def test_a_crash_mid_apply_blocks_the_event_only_for_its_claim(service, sim):
    handler = WebhookHandler(service.engine, sim.webhook_secret("hooks"), claim_seconds=1.0)
    (order,) = sim.update_records("hooks", "orders", n=1, seed=61)
    real_upsert = handler.changes.upsert

    def die(*args, **kwargs):
        raise KeyboardInterrupt("the process died mid-apply")  # not an Exception: nothing cleans up

    handler.changes.upsert = die
    with pytest.raises(KeyboardInterrupt):
        handler.handle(_delivery(sim, "orders/updated", {"id": order}, "crash-1"))
    handler.changes.upsert = real_upsert
    assert handler.handle(_delivery(sim, "orders/updated", {"id": order}, "crash-1")).status == 409
    time.sleep(1.5)  # the claim ends; Shopify's next retry applies the event
    assert handler.handle(_delivery(sim, "orders/updated", {"id": order}, "crash-1")).result == "applied"
    assert stored(service, "hook-user", "orders")[order] == graphql_truth(sim, "hooks", "orders")[order]


def test_a_redaction_survives_later_webhooks_and_a_full_sync(service, sim, compliance):
    customer, orders = _a_customer_with_orders(service)
    assert sim.trigger_customers_redact("hooks", customer, orders)
    _settle(sim, compliance)
    sim.update_records("hooks", "orders", ids=orders[:1])  # Shopify still serves the order in full
    _settle(sim, compliance)
    assert service.sync("hook-user", "manual").success  # and a full sync reads it all again
    assert customer not in stored(service, "hook-user", "customers")
    after = stored(service, "hook-user", "orders")
    assert all(after[o]["email"] is None and after[o]["customer"] is None for o in orders)


def test_two_users_connected_to_one_shop_both_get_its_deletes(service, sim, server):
    service.add_connection("hook-user2", sim.shop_url("hooks"), "literal:shpat_hooks")
    assert service.sync("hook-user2", "initial", data_types=("orders",)).success
    (gone,) = sim.delete_records("hooks", "orders", n=1, seed=71)
    _settle(sim, server)
    for user in ("hook-user", "hook-user2"):
        assert gone not in stored(service, user, "orders"), user


def test_the_server_refuses_bodies_without_an_honest_length(server):
    import socket

    for head in (b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 99999999\r\n"):
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5) as raw:
            raw.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            answer = raw.recv(200)
        assert answer.split(b" ")[1] in (b"411", b"413"), answer


# Answer first, apply after (the webhook inbox) ---------------------------------------------------------------


def _post(server, sim, topic: str, payload: dict, event_id: str) -> requests.Response:
    body = json.dumps(payload).encode()
    # Shopify gives up on an answer after 5 s (and retries): the timeout is that deadline.
    return requests.post(server.url, data=body, headers=_headers(sim, topic, body, event_id), timeout=5)


def test_the_answer_does_not_wait_for_shopify_and_the_event_is_applied_after(service, sim, server):
    from shopify_pipeline.simulator.config import FaultConfig, FaultRule

    (order,) = sim.update_records("hooks", "orders", n=1, seed=81)
    _settle(sim, server)
    for subscription in sim.webhook_subscriptions("hooks"):  # only our delivery below, not Shopify's own
        if subscription["topic"] == "ORDERS_UPDATED":
            sim.unsubscribe("hooks", subscription["id"])
    sim.update_records("hooks", "orders", ids=[order])
    # Every read of the record back from Shopify now hangs 6 s first (longer than Shopify waits for us).
    sim.set_faults("hooks", FaultConfig(hang_seconds=6.0, rules=(FaultRule("hang", "graphql", times=1),)))
    try:
        answer = _post(server, sim, "orders/updated", {"id": order}, "slow-1")
        assert (answer.status_code, answer.json()["result"]) == (200, "accepted")
        assert _post(server, sim, "orders/updated", {"id": order}, "slow-1").json()["detail"] == "already queued"
        assert server.wait_idle(60)
    finally:
        sim.set_faults("hooks", FaultConfig())
    assert stored(service, "hook-user", "orders")[order] == graphql_truth(sim, "hooks", "orders")[order]
    counts = service.engine.dynamodb.get_item(TableName=service.engine.settings.tables.checkpoints,
                                              Key={"userId": {"S": "hook-user"}, "syncType": {"S": "webhook_status"}})
    assert int(counts["Item"]["duplicate_orders"]["N"]) >= 1  # the second delivery, answered without a second apply


def test_an_event_that_keeps_failing_is_kept_as_failed_then_replayed(service, sim, settings):
    from shopify_pipeline.simulator.config import FaultConfig, FaultRule
    from shopify_pipeline.webhooks.inbox import MAX_ATTEMPTS, WebhookInbox

    inbox = WebhookInbox(service.engine.dynamodb, settings.tables.webhook_inbox, retry_base_seconds=0.05)
    handler = WebhookHandler(service.engine, sim.webhook_secret("hooks"))
    (order,) = sim.update_records("hooks", "orders", n=1, seed=91)
    sim.set_faults("hooks", FaultConfig(rules=(FaultRule("500", "graphql", times=0),)))  # Shopify fails every read
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
           "SHOPIFY_PIPELINE_TABLE_PREFIX": settings.tables.checkpoints.removesuffix("sync_checkpoints")}

    def counters() -> dict[str, int]:
        item = service.engine.dynamodb.get_item(TableName=settings.tables.checkpoints, Key={
            "userId": {"S": "hook-user"}, "syncType": {"S": "webhook_status"}})["Item"]
        return {name: int(value["N"]) for name, value in item.items() if "N" in value and "." not in value["N"]}

    def cli(action: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "shopify_pipeline.cli", "webhooks", action, "--json"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    try:
        with WebhookServer(handler, inbox=inbox, sweep_seconds=0.1) as server:
            assert _post(server, sim, "orders/updated", {"id": order}, "failing-1").status_code == 200
            assert server.wait_idle(120)  # retried until it failed for good
            shown = cli("inbox")
            assert (shown["pending"], shown["failed"]) == (0, 1)
            assert shown["failed_events"][0]["attempts"] == MAX_ATTEMPTS
            assert shown["failed_events"][0]["error"]  # the error's type, no payload
            assert counters()["failed_orders"] == 1  # the webhooks_applied check fails on it
            sim.set_faults("hooks", FaultConfig())
            assert cli("replay")["replayed"] == 1
            assert server.wait_idle(60)
    finally:
        sim.set_faults("hooks", FaultConfig())
    assert stored(service, "hook-user", "orders")[order] == graphql_truth(sim, "hooks", "orders")[order]
    assert cli("inbox")["failed"] == 0
    # Replayed and applied: no longer failed, so the check passes again.
    assert counters()["failed_orders"] == 0 and counters()["applied_orders"] >= 1


# bulk_operations/finish wakes the sync waiting on the operation ---------------------------------------------


def test_bulk_operations_finish_wakes_the_sync_waiting_on_its_operation(settings):
    import threading

    from shopify_pipeline.simulator.config import BulkConfig

    # 40 orders with their line items export in a few seconds; the sync's first poll would come after 10 minutes.
    shop = ShopConfig("bulkhook", "shpat_bulkhook", orders=40, products=3, customers=3, seed=43, plan="plus",
                      bulk=BulkConfig(objects_per_second=40.0, created_seconds=0.5))
    with Simulator([shop], time_scale=1) as sim:
        options = SyncOptions(slices=1, bulk_threshold=1, bulk_poll=(600.0, 600.0, 86_400.0))
        service = SyncService(SyncEngine(settings, SHOPIFY, options))
        service.add_connection("bulk-user", sim.shop_url("bulkhook"), "literal:shpat_bulkhook")
        handler = WebhookHandler(service.engine, sim.webhook_secret("bulkhook"))
        with WebhookServer(handler) as server:
            sim.subscribe("bulkhook", "bulk_operations/finish", server.url)
            outcome: dict = {}
            sync = threading.Thread(target=lambda: outcome.update(
                result=service.sync("bulk-user", "initial", data_types=("orders",))), daemon=True)
            sync.start()
            sync.join(timeout=120)  # without the webhook it would wait out its 600 s poll
            assert not sync.is_alive(), "the sync was not woken by bulk_operations/finish"
            assert outcome["result"].success
            assert server.wait_idle(30)
        operations = sim.bulk_operations("bulkhook")
        assert [op["status"] for op in operations] == ["COMPLETED"]
        number = operations[0]["id"].rpartition("/")[2]
        notice = service.engine.dynamodb.get_item(TableName=settings.tables.checkpoints, Key={
            "userId": {"S": "bulk-user"}, "syncType": {"S": f"bulk_finished_{number}"}})
        assert notice["Item"]["status"]["S"] == "completed"
        assert stored(service, "bulk-user", "orders") == graphql_truth(sim, "bulkhook", "orders")


# Retention after an uninstall ---------------------------------------------------------------------------------


def test_an_uninstalled_shop_is_erased_after_the_retention_when_shop_redact_never_comes(service, sim, server,
                                                                                      settings, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from shopify_pipeline.defs.resources import DynamoDBResource, ShopifyResource, SyncEngineResource
    from shopify_pipeline.defs.retention import purge_uninstalled_job
    from shopify_pipeline.settings import SettingsError
    from shopify_pipeline.webhooks.compliance import Compliance, uninstalled_retention_days

    connections = service.engine.connections
    assert sim.trigger_app_uninstalled("hooks")
    _settle(sim, server)
    compliance = Compliance(service.engine)
    assert compliance.purge_uninstalled(30) == {}  # within the retention: kept
    later = datetime.now(timezone.utc) + timedelta(days=29, hours=23)
    assert compliance.purge_uninstalled(30, now=later) == {}
    # The merchant installed the app again (the token works) before the purge: kept, and scheduled again.
    sim.reinstall("hooks")
    assert set(compliance.purge_uninstalled(0)["hook-user"]) == {"kept"}
    assert connections.get("hook-user").disconnected_at is None and stored(service, "hook-user", "orders")
    # Uninstalled for good: the Dagster job, with the retention from the environment (0 days), erases it.
    assert sim.trigger_app_uninstalled("hooks")
    _settle(sim, server)
    assert connections.get("hook-user").disconnected_at
    monkeypatch.setenv("SHOPIFY_UNINSTALLED_RETENTION_DAYS", "0")
    resource = SyncEngineResource(
        dynamodb=DynamoDBResource(endpoint_url=settings.dynamodb_endpoint_url, region_name=settings.aws_region,
                                  table_prefix=settings.tables.orders.removesuffix("shopify_orders")),
        shopify=ShopifyResource(allow_local_shops=True))
    assert purge_uninstalled_job.execute_in_process(resources={"sync_engine": resource}).success
    for data_type in DATA_TYPES:
        assert stored(service, "hook-user", data_type) == {}, data_type
    assert "hook-user" not in {c.user_id for c in connections.list()}
    # Settings: a number of days, `none`, or a clear error.
    assert uninstalled_retention_days({}) == 30
    assert uninstalled_retention_days({"SHOPIFY_UNINSTALLED_RETENTION_DAYS": "none"}) is None
    for wrong in ("thirty", "\u00b2", "-1"):
        with pytest.raises(SettingsError, match="number of days"):
            uninstalled_retention_days({"SHOPIFY_UNINSTALLED_RETENTION_DAYS": wrong})


def test_a_signed_body_replayed_as_app_uninstalled_disconnects_nothing(service, sim, server):
    connections = service.engine.connections
    # Any captured body (an order's) under app/uninstalled: not a shop, refused.
    assert handler_of(server).handle(_delivery(sim, "app/uninstalled", {"id": 1}, "forged-1")).status == 400
    # A shop's body (as an earlier uninstall carried it) with a triggered-at far ahead: Shopify still accepts
    # our token, so the app is installed and nothing changes.
    body = {"id": 1, "myshopify_domain": "hooks.myshopify.com", "name": "hooks"}
    forged = _delivery(sim, "app/uninstalled", body, "forged-2")
    forged = type(forged)(forged.topic, forged.shop, forged.event_id, "2099-01-01T00:00:00Z", forged.body,
                          forged.signature)
    assert handler_of(server).handle(forged).result == "stale"
    assert connections.get("hook-user").disconnected_at is None


def test_one_body_posted_under_many_event_ids_is_applied_and_read_back_once(service, sim, server):
    (order,) = sim.update_records("hooks", "orders", n=1, seed=95)
    _settle(sim, server)
    before = sim.stats("hooks")["requests"].get("graphql", 0)
    body = json.dumps({"id": order, "note": "captured"}).encode()
    for n in range(20):  # the event id header is not signed: a replay may choose any
        headers = _headers(sim, "orders/updated", body, f"flood-{n}")
        assert requests.post(server.url, data=body, headers=headers, timeout=5).status_code == 200
    assert server.wait_idle(60)
    assert sim.stats("hooks")["requests"].get("graphql", 0) - before <= 1
    counts = service.engine.dynamodb.get_item(TableName=service.engine.settings.tables.checkpoints,
                                              Key={"userId": {"S": "hook-user"}, "syncType": {"S": "webhook_status"}})
    assert int(counts["Item"]["duplicate_orders"]["N"]) >= 19


def handler_of(server):
    return server.handler


def test_a_compliance_request_waiting_in_the_inbox_never_expires(service, settings):
    from shopify_pipeline.webhooks.inbox import WebhookInbox

    inbox = WebhookInbox(service.engine.dynamodb, settings.tables.webhook_inbox)
    base = {"user": "hook-user", "shop": "hooks.myshopify.com", "id": None, "triggered_at": None}
    assert inbox.put({**base, "event_id": "e-redact", "topic": "customers/redact", "customer_id": 1, "orders": []})
    assert inbox.put({**base, "event_id": "e-order", "topic": "orders/updated", "id": 5})
    items = {i["id"]["S"]: i for i in service.engine.dynamodb.scan(TableName=settings.tables.webhook_inbox)["Items"]}
    assert "expiration" not in items["e-redact"] and int(items["e-order"]["expiration"]["N"]) > time.time()


def test_in_aws_a_failed_apply_is_retried_by_the_scheduled_sweep_through_the_stream(service, sim, lambda_env,
                                                                                     monkeypatch):
    from shopify_pipeline.simulator.config import FaultConfig, FaultRule
    from shopify_pipeline.webhooks import aws_lambda
    from shopify_pipeline.webhooks.inbox import WebhookInbox

    settings = service.engine.settings
    monkeypatch.setattr(aws_lambda, "_inbox", WebhookInbox(service.engine.dynamodb, settings.tables.webhook_inbox,
                                                           retry_base_seconds=0.0))  # the retry is due at once
    (order,) = sim.update_records("hooks", "orders", n=1, seed=97)
    body = json.dumps({"id": order}).encode()
    event = {"version": "2.0", "headers": _headers(sim, "orders/updated", body, "aws-retry-1"),
             "requestContext": {"http": {"method": "POST"}}, "isBase64Encoded": False, "body": body.decode()}
    assert lambda_env(event, None)["statusCode"] == 200
    sim.set_faults("hooks", FaultConfig(rules=(FaultRule("500", "graphql", times=0),)))
    try:
        # The apply fails: counted on the item, and the shard is not held up (no batch item failure).
        assert lambda_env({"Records": _inbox_stream(settings)}, None) == {"batchItemFailures": []}
        (item,) = service.engine.dynamodb.scan(TableName=settings.tables.webhook_inbox)["Items"]
        assert item["attempts"]["N"] == "1" and item["status"]["S"] == "pending"
    finally:
        sim.set_faults("hooks", FaultConfig())
    assert lambda_env({"action": "sweep_webhook_inbox"}, None) == {"requeued": 1}
    assert lambda_env({"Records": _inbox_stream(settings)}, None) == {"batchItemFailures": []}
    assert stored(service, "hook-user", "orders")[order] == graphql_truth(sim, "hooks", "orders")[order]
    assert service.engine.dynamodb.scan(TableName=settings.tables.webhook_inbox)["Items"] == []


def test_the_sweep_reads_the_pending_items_only_not_the_failed_ones_kept(service, settings):
    from shopify_pipeline.webhooks.inbox import FAILED, MAX_ATTEMPTS, WebhookInbox

    inbox = WebhookInbox(service.engine.dynamodb, settings.tables.webhook_inbox, retry_base_seconds=0.0)
    base = {"user": "hook-user", "shop": "hooks.myshopify.com", "topic": "orders/updated", "triggered_at": None}
    for n in range(30):
        assert inbox.put({**base, "event_id": f"kept-{n}", "id": n})
        item = inbox.get(f"kept-{n}")
        for _ in range(MAX_ATTEMPTS):
            item = inbox.get(f"kept-{n}")
            inbox.attempt_failed(item, RuntimeError("Shopify down"))
        assert inbox.get(f"kept-{n}").status == FAILED
    assert inbox.put({**base, "event_id": "waiting", "id": 99})
    in_index = service.engine.dynamodb.query(
        TableName=settings.tables.webhook_inbox, IndexName="due", KeyConditionExpression="#q = :p",
        ExpressionAttributeNames={"#q": "queue"}, ExpressionAttributeValues={":p": {"S": "pending"}})
    assert in_index["ScannedCount"] == 1  # what a sweep reads: the one waiting, not the 30 kept as failed
    assert [item.event_id for item in inbox.due()] == ["waiting"]
    assert inbox.replay() == 30 and len(inbox.due()) == 31  # replayed: back in the index
