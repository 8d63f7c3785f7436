"""Hostile shops: a real HTTP server on loopback that lies, redirects, trickles, floods and stalls.

Each test drives the real client and engine (and DynamoDB Local) against `HostileServer`, which proxies
the simulator except for the requests a rule picks. The properties: the token never leaves the shop,
every wait is bounded, a sync that lost its lease changes nothing, and bad data is reported, not fatal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests

from shopify_pipeline.dynamo.batch_writer import BatchWriter
from shopify_pipeline.dynamo.lease import HeldLease, LeaseLostError
from shopify_pipeline.shopify.client import ShopifyClient, retry_after_seconds
from shopify_pipeline.shopify.errors import RedirectRefusedError, ResponseTooLargeError, ShopifyTransientError
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.support.hostile_server import (
    Hold,
    HostileServer,
    Huge,
    Proxy,
    Redirect,
    Respond,
    Trickle,
    chain,
    rule_for,
)
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, source_of_truth, stored

TOKEN = "shpat_hostile_0123456789abcdef"
ORDERS = "/orders.json"


@pytest.fixture(scope="module")
def sim():
    shops = [ShopConfig("prey", TOKEN, orders=120, products=6, customers=8, seed=41, plan="plus"),
             ShopConfig("tiny", TOKEN, orders=12, products=2, customers=2, seed=42, plan="plus"),
             # Over the 1 000 orders a full sync splits into 4 slices: four pages read at once.
             ShopConfig("big", TOKEN, orders=1500, products=2, customers=2, seed=43, plan="plus")]
    with Simulator(shops, time_scale=10) as running:
        yield running


@pytest.fixture
def hostile(sim):
    with HostileServer(upstream=sim.base_url) as server:
        yield server
        assert server.errors == []


@pytest.fixture
def elsewhere(sim):
    """"Another host": a server on 127.0.0.2 that would serve the simulator's data if asked."""
    with HostileServer(host="127.0.0.2", upstream=sim.base_url) as server:
        yield server


def _service(settings, hostile, shop="prey", shopify=FAST_SHOPIFY, api="rest", **options) -> SyncService:
    """A service whose user `victim` reads the shop through the hostile server; REST unless `api` says
    otherwise (most scenarios here script REST paths: next links, page_info)."""
    service = SyncService(SyncEngine(settings, shopify, SyncOptions(**{"slices": 1, **options})))
    service.add_connection("victim", f"{hostile.url}/shops/{shop}", f"literal:{TOKEN}", api=api)
    return service


def _cli_env(settings, **extra) -> dict[str, str]:
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    return {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
            "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1", **extra}


SYNC_ORDERS = [sys.executable, "-m", "shopify_pipeline.cli", "sync", "--user", "victim", "--type", "initial",
               "--data-types", "orders"]


# 1. Redirects ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_host_is_refused_and_the_other_host_sees_nothing(settings, hostile, elsewhere,
                                                                               status):
    hostile.script(lambda seen: Redirect(f"{elsewhere.url}{seen.path}", status) if ORDERS in seen.path else None)
    service = _service(settings, hostile)
    result = service.initial_sync("victim", ("orders",))
    assert not result.success
    assert "redirect" in result.data_types["orders"].error and "127.0.0.2" in result.data_types["orders"].error
    assert elsewhere.seen == []  # not one request, so not the token either
    assert stored(service, "victim", "orders") == {}
    status_item = service.get_sync_status("victim")["dataTypes"]["orders"]
    assert status_item["status"] == "failed"
    assert status_item["error"]["reason"] == "redirect" and status_item["error"]["permanent"] is True


def test_a_redirect_of_a_next_page_is_refused_by_the_cli_too(settings, sim, hostile, elsewhere):
    hostile.script(lambda seen: Redirect(f"{elsewhere.url}{seen.path}") if "page_info" in seen.path else None)
    _service(settings, hostile)
    done = subprocess.run(SYNC_ORDERS, env=_cli_env(settings, SHOPIFY_PAGE_SIZE="50"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "redirect" in done.stdout
    assert elsewhere.seen == []
    assert TOKEN not in done.stdout + done.stderr


# 2. A sync that outlived its lease changes nothing ---------------------------------------------------

def test_a_sync_that_outlived_its_lease_cannot_touch_the_syncs_after_it(settings, sim, hostile):
    """A's request for page 2 is held while A is frozen (SIGSTOP) past its 3 s lease. B takes over and
    finishes; three orders are created; C starts anew and fetches. Then A gets its (stale) page 2 and
    wakes up: it must write nothing, and C must end with DynamoDB equal to the shop."""
    hold = Hold(threading.Event())
    hostile.script(rule_for("page_info", hold, times=1))
    engine_settings = dataclasses.replace(settings, lease_seconds=3.0)
    service = SyncService(SyncEngine(engine_settings, FAST_SHOPIFY, SyncOptions(slices=1)))
    service.add_connection("victim", f"{hostile.url}/shops/prey", f"literal:{TOKEN}", api="rest")
    env = _cli_env(settings, SHOPIFY_PAGE_SIZE="50", SYNC_LEASE_SECONDS="3")
    sync_a = subprocess.Popen(SYNC_ORDERS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert hold.arrived.wait(60), "A never asked for page 2"
        sync_a.send_signal(signal.SIGSTOP)
        time.sleep(4.5)  # A's lease (3 s) runs out while it is frozen

        b = service.sync("victim", "initial", ("orders",))  # takes the expired lease, resumes A's checkpoint
        assert b.success and b.data_types["orders"].pages_fetched_this_run == 2
        created = sim.create_records("prey", "orders", n=3, seed=5)

        c = service.engine.fetch("victim", "initial", "orders")  # a new sync: new generation, all pages
        assert c.complete and c.records == 123

        hold.release.set()  # A's page 2 is answered now, and A wakes up
        sync_a.send_signal(signal.SIGCONT)
        output, _ = sync_a.communicate(timeout=60)
    finally:
        hold.release.set()
        if sync_a.poll() is None:
            sync_a.send_signal(signal.SIGCONT)
            sync_a.kill()
    assert sync_a.returncode == 1, output
    assert "lost its lease" in output

    loaded = service.engine.load("victim", "initial", "orders")
    assert loaded.finished
    assert stored(service, "victim", "orders") == source_of_truth(sim, "prey", "orders")
    assert set(created) <= set(stored(service, "victim", "orders"))
    assert service.get_sync_status("victim")["dataTypes"]["orders"]["status"] == "completed"


def test_a_killed_sync_is_resumed_at_once_without_clearing_its_lease(settings, sim, hostile):
    hold = Hold(threading.Event())
    hostile.script(rule_for("page_info", hold, times=1))
    service = _service(settings, hostile)
    sync_a = subprocess.Popen(SYNC_ORDERS, env=_cli_env(settings, SHOPIFY_PAGE_SIZE="50"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hold.arrived.wait(60)
        sync_a.send_signal(signal.SIGKILL)
        sync_a.wait()
    finally:
        hold.release.set()
    assert service.engine.state.lease("victim", "orders") is not None  # the dead process's lease is still there
    rerun = subprocess.run(SYNC_ORDERS, env=_cli_env(settings, SHOPIFY_PAGE_SIZE="50"), capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert stored(service, "victim", "orders") == source_of_truth(sim, "prey", "orders")


def test_a_load_that_lost_its_lease_stops_before_its_next_batch(settings, sim, hostile):
    service = _service(settings, hostile)
    engine = service.engine
    assert engine.fetch("victim", "initial", "orders").complete
    checks = {"count": 0}
    real_check = HeldLease.check

    def check_then_break_after_the_first_batch(held):
        checks["count"] += 1
        if checks["count"] == 3:  # the page's check, the first batch's, then an operator breaks the lease
            engine.state.break_lease("victim", "orders")
        real_check(held)

    engine.writer = BatchWriter(engine.dynamodb, settings, workers=1)  # one batch at a time: a known order
    HeldLease.check = check_then_break_after_the_first_batch
    try:
        with pytest.raises(LeaseLostError):
            engine.load("victim", "initial", "orders")
    finally:
        HeldLease.check = real_check
    assert len(stored(service, "victim", "orders")) == 25  # the first batch; none after the break
    assert engine.state.load_checkpoint("victim", "initial", "orders") is not None  # not finished
    assert engine.connections.get("victim").high_water.get("orders") is None


# 3. Every wait is bounded -----------------------------------------------------------------------------

def test_the_request_timeout_is_a_deadline_for_the_whole_answer_not_per_read(settings, hostile):
    # One byte every 0.3 s: no read ever waits long, the whole answer would take 5 minutes.
    hostile.script(rule_for(ORDERS, Trickle(body=b" " * 1000, interval=0.3), times=None))
    shopify = dataclasses.replace(FAST_SHOPIFY, timeout_seconds=1.5, retries=1)
    client = ShopifyClient(f"{hostile.url}/shops/prey", TOKEN, shopify, sleep=lambda s: None)
    with pytest.raises(ShopifyTransientError, match="1.5 s request deadline"):
        client.fetch_page("orders", client.first_page_url("orders"))
    assert len(hostile.requests_to(ORDERS)) == 2  # the attempt and its one retry, each cut at the deadline


def test_trickled_headers_hit_the_deadline_too(settings, hostile):
    hostile.script(rule_for(ORDERS, Trickle(trickle_headers=True, interval=0.3), times=None))
    shopify = dataclasses.replace(FAST_SHOPIFY, timeout_seconds=1.5, retries=1)
    client = ShopifyClient(f"{hostile.url}/shops/prey", TOKEN, shopify, sleep=lambda s: None)
    with pytest.raises(ShopifyTransientError, match="deadline"):
        client.fetch_page("orders", client.first_page_url("orders"))


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "99999", "1e400", "soon",
                                   format_datetime(datetime.now(timezone.utc) + timedelta(days=3), usegmt=True)])
def test_absurd_retry_after_values_are_capped_or_replaced(settings, sim, hostile, value):
    throttled = Respond(429, b'{"errors":"Exceeded 2 calls per second for api client."}', {"Retry-After": value})
    hostile.script(rule_for(ORDERS, throttled, times=2))
    waits: list[float] = []
    shopify = dataclasses.replace(FAST_SHOPIFY, retry_after_cap_seconds=0.2)
    client = ShopifyClient(f"{hostile.url}/shops/prey", TOKEN, shopify, sleep=waits.append)
    page = client.fetch_page("orders", client.first_page_url("orders"))
    assert len(page.records) == len(sim.records("prey", "orders"))
    assert len(waits) == 2 and all(0 <= wait <= 2.0 for wait in waits)


def test_retry_after_parsing():
    assert retry_after_seconds("2.0") == 2.0
    assert retry_after_seconds("120", cap=60) == 60
    for broken in ("inf", "-inf", "nan", "-1", "", "later", "1e999"):
        assert retry_after_seconds(broken, default=2.0) == 2.0
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds(soon, cap=60) <= 30
    past = format_datetime(datetime.now(timezone.utc) - timedelta(days=1), usegmt=True)
    assert retry_after_seconds(past, default=2.0) == 2.0


@pytest.mark.parametrize("header", ["1000000000/40", "inf/40", "41/40", "nan/40", "5/0", "-3/40", "40/inf",
                                    "2/2", "1/1", "3/3"])
def test_call_limit_headers_that_make_no_sense_cannot_stall_a_sync(settings, sim, hostile, header):
    hostile.script(lambda seen: Proxy(headers={"X-Shopify-Shop-Api-Call-Limit": header}))
    service = _service(settings, hostile, shop="tiny")
    shopify = dataclasses.replace(FAST_SHOPIFY, page_size=5)
    service.engine.shopify_settings = shopify
    result = service.sync("victim", "initial", ("orders",))  # a stall would hit pytest's timeout
    assert result.success
    assert stored(service, "victim", "orders") == source_of_truth(sim, "tiny", "orders")


def test_a_cursor_that_repeats_fails_the_slice_instead_of_staging_forever(settings, hostile):
    loop = f"{hostile.url}/shops/prey/admin/api/2025-10/orders.json?limit=50&page_info=loop"
    order = json.dumps({"orders": [{"id": 99, "updated_at": "2026-01-01T00:00:00Z"}]}).encode()
    hostile.script(chain(
        rule_for("page_info=loop", Respond(200, order, {"Link": f'<{loop}>; rel="next"'}), times=None),
        rule_for(ORDERS, Proxy(headers={"Link": f'<{loop}>; rel="next"'}), times=None),
    ))
    service = _service(settings, hostile)
    result = service.initial_sync("victim", ("orders",))
    assert not result.success
    failed = result.data_types["orders"].failed_pages
    assert len(failed) == 1 and "cursor loop" in failed[0]["error"]
    assert len(hostile.requests_to("page_info=loop")) == 1
    status = service.get_sync_status("victim")["dataTypes"]["orders"]
    assert status["status"] == "failed" and status["error"]["failedPages"][0]["page"] == 2


# 4. A bad record is reported and the rest written -----------------------------------------------------

def test_records_without_a_usable_id_are_reported_and_the_rest_of_the_page_is_written(settings, sim, hostile):
    page = requests.get(f"{sim.shop_url('tiny')}/admin/api/2025-10/orders.json?limit=250&status=any",
                        headers={"X-Shopify-Access-Token": TOKEN}, timeout=10).json()
    orders = page["orders"]
    del orders[1]["id"]
    orders[3]["id"] = "4500000000004"
    orders[5]["updated_at"] = "yesterday"
    hostile.script(rule_for(ORDERS, Respond(200, json.dumps(page).encode()), times=None))
    service = _service(settings, hostile, shop="tiny")
    result = service.initial_sync("victim", ("orders",))
    assert not result.success
    error = result.data_types["orders"].error
    assert "3 orders record(s)" in error and "record 2: `id` is missing" in error
    assert "record 4: `id` is not an integer" in error
    kept = stored(service, "victim", "orders")
    assert sorted(kept) == sorted(o["id"] for i, o in enumerate(orders) if i not in (1, 3, 5))
    status = service.get_sync_status("victim")["dataTypes"]["orders"]
    assert status["status"] == "failed"
    assert status["error"] == {"type": "BadRecordError", "reason": "bad_record", "permanent": True}
    assert service.engine.connections.get("victim").high_water.get("orders") is None  # not past the bad ones


# 5. Memory: an answer too large fails its page before it is read ---------------------------------------

def _peak_rss_mb(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped by wait4 above
    return usage.ru_maxrss / 1024, output  # ru_maxrss of that child alone, in kilobytes on Linux


@pytest.mark.parametrize("huge", [Huge(200 * 2**20, content_length=False), Huge(200 * 2**20),
                                  Huge(200 * 2**20, gzip=True)], ids=["chunked", "declared", "gzip-bomb"])
def test_a_200_mb_answer_fails_its_page_and_peak_memory_stays_near_a_normal_sync(settings, sim, hostile, huge):
    """Every listing page of a 1 500-order shop (4 slices fetched in parallel) answers 200 MB."""
    _service(settings, hostile, shop="big")
    env = _cli_env(settings, SHOPIFY_PAGE_SIZE="250")
    normal_mb, output = _peak_rss_mb([*SYNC_ORDERS, "--json"], env)
    assert '"success": true' in output, output
    hostile.script(rule_for(ORDERS, huge, times=None))
    flooded_mb, output = _peak_rss_mb([*SYNC_ORDERS, "--json"], env)
    assert "larger than the 67,108,864 byte cap" in output, output
    print(f"peak RSS: normal sync {normal_mb:.0f} MB, with a 200 MB answer ({huge}) {flooded_mb:.0f} MB")
    assert flooded_mb - normal_mb < 100


def test_a_too_large_answer_is_a_transient_page_failure(settings, hostile):
    hostile.script(rule_for(ORDERS, Huge(3 * 2**20), times=None))
    shopify = dataclasses.replace(FAST_SHOPIFY, max_response_bytes=2**20)
    client = ShopifyClient(f"{hostile.url}/shops/prey", TOKEN, shopify, sleep=lambda s: None)
    with pytest.raises(ResponseTooLargeError, match="declared 3,145,728 bytes"):
        client.fetch_page("orders", client.first_page_url("orders"))


def test_a_redirect_is_a_permanent_error_of_the_client(hostile, elsewhere):
    hostile.script(lambda seen: Redirect(f"{elsewhere.url}{seen.path}", 307))
    client = ShopifyClient(f"{hostile.url}/shops/prey", TOKEN, FAST_SHOPIFY)
    with pytest.raises(RedirectRefusedError, match="would send the access token elsewhere"):
        client.count("orders")
    assert elsewhere.seen == []


def test_a_page_put_delayed_past_a_lease_takeover_is_refused(settings, sim, hostile):
    """Found by review: a sync that takes over resumes the same checkpoint, so the same page generation. A's
    put of page 2, delayed after A read it (a VM pause, a PutItem stuck in retries), must not replace the page
    B staged after two orders of page 2 were deleted: staged pages are fenced writes."""
    shopify = dataclasses.replace(FAST_SHOPIFY, page_size=50)
    a = SyncEngine(settings, shopify, SyncOptions(slices=1))
    b = SyncEngine(settings, shopify, SyncOptions(slices=1))
    SyncService(a).add_connection("victim", f"{hostile.url}/shops/prey", f"literal:{TOKEN}", api="rest")
    at_put, go = threading.Event(), threading.Event()
    real_put = a.pages.put

    def delayed_put(key, number, body, records, url, fence=None):
        if number == 2:
            at_put.set()
            go.wait(60)
        return real_put(key, number, body, records, url, fence)

    a.pages.put = delayed_put  # a seam: the delay between reading a page and staging it
    outcome = {}
    sync_a = threading.Thread(target=lambda: outcome.update(a=_error_of(a.fetch, "victim", "initial", "orders")))
    sync_a.start()
    assert at_put.wait(60)
    a.state.break_lease("victim", "orders")  # an operator, while A is stalled
    second_page = sorted(sim.record_versions("prey", "orders"))[50:100]
    sim.delete_records("prey", "orders", ids=second_page[:2])
    taken_over = b.fetch("victim", "initial", "orders")  # resumes A's checkpoint: the same generation
    assert taken_over.resumed and taken_over.complete
    go.set()
    sync_a.join(60)
    assert outcome["a"] == "LeaseLostError"
    assert b.load("victim", "initial", "orders").finished
    service = SyncService(b)
    assert stored(service, "victim", "orders") == source_of_truth(sim, "prey", "orders")


def _error_of(call, *args) -> str | None:
    try:
        call(*args)
    except Exception as error:  # noqa: BLE001 - the test reports which error ended the call
        return type(error).__name__
    return None


def test_a_timestamp_that_cannot_be_converted_to_utc_is_a_reported_bad_record(settings, sim, hostile):
    page = requests.get(f"{sim.shop_url('tiny')}/admin/api/2025-10/orders.json?limit=250&status=any",
                        headers={"X-Shopify-Access-Token": TOKEN}, timeout=10).json()
    page["orders"][0]["updated_at"] = "0001-01-01T00:00:00+05:00"  # parses, but is before year 1 in UTC
    hostile.script(rule_for(ORDERS, Respond(200, json.dumps(page).encode()), times=None))
    service = _service(settings, hostile, shop="tiny")
    result = service.initial_sync("victim", ("orders",))
    assert not result.success and "record 1: `updated_at` is not an ISO-8601 timestamp" in (
        result.data_types["orders"].error)
    assert len(stored(service, "victim", "orders")) == len(page["orders"]) - 1
    assert service.get_sync_status("victim")["dataTypes"]["orders"]["error"]["reason"] == "bad_record"


@pytest.mark.parametrize(("path", "body"), [
    ("/orders/count.json", b'{"count": "many"}'),
    ("/access_scopes.json", b'{"access_scopes": ["read_orders"]}'),
])
def test_json_of_the_wrong_shape_is_a_typed_failure_with_a_status(settings, hostile, path, body):
    hostile.script(rule_for(path, Respond(200, body), times=None))
    service = _service(settings, hostile, slices=4, min_records_to_slice=10)
    result = service.initial_sync("victim", ("orders",))
    assert not result.success
    status = service.get_sync_status("victim")["dataTypes"]["orders"]
    assert status["status"] == "failed" and not status["stuck"]
    assert "not" in status["message"]  # "is not a number" / "are not a list of …"


def test_one_threads_retry_never_cancels_another_threads_deadline():
    """Found by review: thread A's 500 returns its keep-alive connection to the pool, thread B takes it for a
    trickled answer, then A's retry must not disarm B's watchdog."""
    with HostileServer() as server:
        server.script(chain(
            rule_for("slow", Trickle(body=b" " * 400, interval=0.5), times=None),
            rule_for("err", Respond(500, b'{"errors":"boom"}'), times=1),
            lambda seen: Respond(200, b'{"orders":[]}'),
        ))
        shopify = dataclasses.replace(FAST_SHOPIFY, timeout_seconds=2.0, retries=2, backoff_seconds=1.0)
        client = ShopifyClient(server.url, TOKEN, shopify)
        outcome = {}

        def slow_reader():
            time.sleep(0.3)  # after A's 500, while A sleeps its backoff
            outcome["b"] = _error_of(client.get, client.api_url("orders.json", {"slow": 1}))

        reader = threading.Thread(target=slow_reader)
        reader.start()
        client.get(client.api_url("orders.json", {"err": 1}))  # 500, then 200 after a 1 s backoff
        reader.join(60)  # 400 bytes at 0.5 s each would take 200 s: only the deadline ends it
        assert outcome["b"] == "IncompleteAnswerError"


# GraphQL: the same rules on the one GraphQL endpoint -----------------------------------------------------

LISTING = b"query Sync("  # the listing query of a sync (shopify/sources.py); scopes and counts are others


def test_a_graphql_sync_through_a_relaying_server_arrives_whole(settings, sim, hostile):
    service = _service(settings, hostile, api="graphql")
    assert service.initial_sync("victim", ("orders",)).success
    assert stored(service, "victim", "orders") == graphql_truth(sim, "prey", "orders")


@pytest.mark.parametrize("status", [301, 307])
def test_a_redirect_of_the_graphql_endpoint_is_refused_and_the_other_host_sees_nothing(settings, hostile,
                                                                                      elsewhere, status):
    hostile.script(lambda seen: Redirect(f"{elsewhere.url}{seen.path}", status) if LISTING in seen.body else None)
    service = _service(settings, hostile, api="graphql")
    result = service.initial_sync("victim", ("orders",))
    assert not result.success and "redirect" in result.data_types["orders"].error
    assert elsewhere.seen == []  # not one request, so not the token either
    assert stored(service, "victim", "orders") == {}
    status_item = service.get_sync_status("victim")["dataTypes"]["orders"]
    assert status_item["error"]["reason"] == "redirect" and status_item["error"]["permanent"] is True


def test_a_huge_graphql_answer_fails_its_page_without_being_read(settings, hostile):
    hostile.script(lambda seen: Huge(8 * 2**20) if LISTING in seen.body else None)
    shopify = dataclasses.replace(FAST_SHOPIFY, max_response_bytes=2**20)
    service = _service(settings, hostile, shopify=shopify, api="graphql")
    result = service.initial_sync("victim", ("orders",))
    failed = result.data_types["orders"].failed_pages
    assert not result.success and len(failed) == 1 and "larger than the 1,048,576 byte cap" in failed[0]["error"]
    assert stored(service, "victim", "orders") == {}


def test_a_graphql_cursor_that_repeats_fails_the_slice_instead_of_staging_forever(settings, hostile):
    order = {"id": "gid://shopify/Order/99", "legacyResourceId": "99", "updatedAt": "2026-01-01T00:00:00Z",
             "createdAt": "2026-01-01T00:00:00Z", "lineItems": {"nodes": [], "pageInfo": {"hasNextPage": False}}}
    page = {"data": {"orders": {"nodes": [order], "pageInfo": {"hasNextPage": True, "endCursor": "loop"}}},
            "extensions": {"cost": {"requestedQueryCost": 12, "actualQueryCost": 5, "throttleStatus": {
                "maximumAvailable": 2000.0, "currentlyAvailable": 1990.0, "restoreRate": 100.0}}}}
    hostile.script(lambda seen: Respond(200, json.dumps(page).encode(), {"Content-Type": "application/json"})
                   if LISTING in seen.body else None)
    service = _service(settings, hostile, api="graphql")
    result = service.initial_sync("victim", ("orders",))
    failed = result.data_types["orders"].failed_pages
    assert not result.success and len(failed) == 1 and "cursor loop" in failed[0]["error"]
    assert len([s for s in hostile.seen if LISTING in s.body]) == 2  # the first page, and the loop once
    assert set(stored(service, "victim", "orders")) == {99}  # the page before the loop is kept


def _graphql_page(nodes: list, has_next: bool = False, cursor: str | None = None) -> Respond:
    page = {"data": {"orders": {"nodes": nodes, "pageInfo": {"hasNextPage": has_next, "endCursor": cursor}}},
            "extensions": {"cost": {"requestedQueryCost": 12, "actualQueryCost": 5, "throttleStatus": {
                "maximumAvailable": 2000.0, "currentlyAvailable": 1990.0, "restoreRate": 100.0}}}}
    return Respond(200, json.dumps(page).encode(), {"Content-Type": "application/json"})


def _graphql_order(number: int, **fields) -> dict:
    return {"id": f"gid://shopify/Order/{number}", "legacyResourceId": str(number),
            "updatedAt": "2026-01-01T00:00:00Z", "createdAt": "2026-01-01T00:00:00Z",
            "lineItems": {"nodes": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}, **fields}


@pytest.mark.parametrize("broken", [
    {"id": 5},  # an integer id: a REST-shaped record in a GraphQL answer
    {"id": "gid://shopify/Product/6", "legacyResourceId": "6"},  # a record of another type
    {"lineItems": {"nodes": [{"id": "gid://shopify/LineItem/1"}]}},  # no pageInfo: complete or cut off?
    {"lineItems": None},  # the nested list missing altogether
], ids=["integer-id", "other-type", "nested-without-pageInfo", "nested-missing"])
def test_a_graphql_page_with_a_node_that_is_not_a_whole_order_fails_and_stores_nothing(settings, hostile, broken):
    hostile.script(lambda seen: _graphql_page([_graphql_order(98), _graphql_order(99, **broken)])
                   if LISTING in seen.body else None)
    service = _service(settings, hostile, api="graphql")
    result = service.initial_sync("victim", ("orders",))
    failed = result.data_types["orders"].failed_pages
    assert not result.success and len(failed) == 1, result
    assert stored(service, "victim", "orders") == {}  # not the good order either: the page is one answer


def test_a_graphql_connection_without_nodes_is_not_an_empty_shop(settings, hostile):
    empty = {"data": {"orders": {"pageInfo": {"hasNextPage": False}}}}
    hostile.script(lambda seen: Respond(200, json.dumps(empty).encode(), {"Content-Type": "application/json"})
                   if LISTING in seen.body else None)
    service = _service(settings, hostile, api="graphql")
    result = service.initial_sync("victim", ("orders",))
    assert not result.success and "no list of objects" in result.data_types["orders"].failed_pages[0]["error"]
    assert service.engine.connections.get("victim").high_water == {}  # the sync did not finish on nothing
