"""What an operator sees: no part of a token in any output, clear errors for bad token references, token
values and user ids, a failure summary that counts what the checkpoint kept, and `stuck` only for a
sync that holds no live lease."""

import json
import os
import random
import re
import string
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from shopify_pipeline.dynamo.connections import InvalidUserIdError, public_token_ref
from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline.sync.tokens import TokenFormatError, TokenReferenceError, resolve_token
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY

# Letters only after the prefix: no 6-character piece of it can match a timestamp or a hex id by chance.
TOKEN = "shpat_" + "".join(random.SystemRandom().choice(string.ascii_letters) for _ in range(32))
ORDERS = 900  # under min_records_to_slice: one slice of 4 pages of 250, fetched in order


@pytest.fixture(scope="module")
def shop_sim():
    shop = ShopConfig("leaky", TOKEN, orders=ORDERS, products=3, customers=4, seed=5, plan="plus")
    with Simulator([shop], time_scale=10) as running:
        yield running


@pytest.fixture
def svc(settings, shop_sim):
    shop_sim.set_faults("leaky", FaultConfig())
    shop_sim.set_state("leaky", "active")
    return SyncService(SyncEngine(settings, FAST_SHOPIFY, SyncOptions(slices=1)))


def _pieces_of_token_in(text: str) -> set[str]:
    """Every 6-character piece of TOKEN found in `text` (any longer piece contains one of these)."""
    return {TOKEN[i:i + 6] for i in range(len(TOKEN) - 5)} & {text[i:i + 6] for i in range(len(text) - 5)}


def _cli(settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    environ = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
               "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "shopify_pipeline.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=300)


# Token references and tokens ---------------------------------------------------------------------


def test_no_cli_output_shows_any_part_of_the_token(settings, shop_sim):
    url = shop_sim.shop_url("leaky")
    outputs: list[str] = []

    def run(*args: str, env: dict[str, str] | None = None, code: int = 0) -> subprocess.CompletedProcess:
        done = _cli(settings, *args, env=env)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == code, f"{args[:2]} exited {done.returncode}: {done.stdout}{done.stderr}"
        return done

    pasted = run("users", "add", "--user", "u-pasted", "--shop", url, "--token-ref", TOKEN, code=2)
    assert "env:VAR" in pasted.stderr and "env:ACME_TOKEN" in pasted.stderr and "literal:TOKEN" in pasted.stderr

    run("users", "add", "--user", "u-env", "--shop", url, "--token-ref", "env:LEAKY_TOKEN")
    requests_before = shop_sim.stats("leaky")["total_requests"]
    stopped = run("sync", "--user", "u-env", "--type", "initial", env={"LEAKY_TOKEN": TOKEN + "\n"}, code=1)
    assert "env:LEAKY_TOKEN" in stopped.stdout and "strip it" in stopped.stdout
    assert shop_sim.stats("leaky")["total_requests"] == requests_before, "a malformed token is never sent"
    run("status", "--user", "u-env")
    assert json.loads(run("status", "--user", "u-env", "--json").stdout)["status"] == "failed"

    run("users", "add", "--user", "u-literal", "--shop", url, "--token-ref", f"literal:{TOKEN}")
    added = run("users", "add", "--user", "u-literal", "--shop", url, "--token-ref", f"literal:{TOKEN}", "--json")
    assert json.loads(added.stdout)["token_ref"] == "literal:***"
    assert "u-literal" in run("users", "list").stdout
    listed = json.loads(run("users", "list", "--json").stdout)
    assert {c["user_id"]: c["token_ref"] for c in listed} == {"u-env": "env:LEAKY_TOKEN", "u-literal": "literal:***"}
    synced = run("sync", "--user", "u-literal", "--type", "initial")  # the stored literal token still works
    assert re.search(rf"orders\s+{ORDERS} records", synced.stdout)
    run("sync", "--user", "u-literal", "--type", "manual", "--json")
    run("status", "--user", "u-literal")
    assert json.loads(run("status", "--user", "u-literal", "--json").stdout)["status"] == "completed"

    assert not _pieces_of_token_in("\n".join(outputs))


BAD_REFERENCES = {
    "pasted token": TOKEN, "unknown scheme": f"bearer:{TOKEN}", "token before a colon": f"{TOKEN}:x",
    "env: token": f"env:{TOKEN}", "secretsmanager: token": f"secretsmanager:{TOKEN}", "empty env": "env:",
    "empty secretsmanager": "secretsmanager:", "empty literal": "literal:", "env dash": "env:ACME-TOKEN",
    "env digit first": "env:1ACME", "env space": f"env:ACME {TOKEN}", "secret space": f"secretsmanager:s/{TOKEN} x",
    "literal space first": f"literal: {TOKEN}", "literal newline": f"literal:{TOKEN}\n",
    "literal tab inside": f"literal:{TOKEN[:9]}\t{TOKEN[9:]}",
}


@pytest.mark.parametrize("reference", BAD_REFERENCES.values(), ids=BAD_REFERENCES.keys())
def test_an_unusable_token_reference_is_refused_at_add_without_showing_it(svc, shop_sim, reference):
    with pytest.raises(TokenReferenceError) as refused:
        svc.add_connection("u-refused", shop_sim.shop_url("leaky"), reference)
    assert not _pieces_of_token_in(str(refused.value))
    if reference.partition(":")[0] != "literal":
        assert "env:VAR" in str(refused.value) and "e.g. env:ACME_TOKEN" in str(refused.value)
    assert "u-refused" not in {c.user_id for c in svc.list_connections()}
    with pytest.raises(TokenReferenceError) as unresolved:  # one stored before references were checked
        resolve_token(reference)
    assert not _pieces_of_token_in(str(unresolved.value))


def test_a_literal_token_is_shown_as_stars_and_stays_usable(svc, shop_sim):
    added = svc.add_connection("u-literal", shop_sim.shop_url("leaky"), f"literal:{TOKEN}")
    svc.add_connection("u-env", shop_sim.shop_url("leaky"), "env:LEAKY_TOKEN")
    assert added.public()["token_ref"] == "literal:***"
    shown = {c.user_id: c.public()["token_ref"] for c in svc.list_connections()}
    assert shown == {"u-env": "env:LEAKY_TOKEN", "u-literal": "literal:***"}
    assert not _pieces_of_token_in(repr(svc.list_connections()) + repr(added))
    assert public_token_ref(TOKEN) == "***"  # a pasted token stored before references were checked
    assert svc.engine.connections.get("u-literal").token_ref == f"literal:{TOKEN}"
    assert svc.manual_sync("u-literal", data_types=("customers",)).success


MALFORMED_TOKENS = {
    "newline after": TOKEN + "\n", "space before": " " + TOKEN, "crlf after": TOKEN + "\r\n",
    "space inside": f"{TOKEN[:9]} {TOKEN[9:]}", "control inside": f"{TOKEN[:9]}\x07{TOKEN[9:]}",
    "non-ascii inside": f"{TOKEN[:9]}é{TOKEN[9:]}",
}


@pytest.mark.parametrize("value", MALFORMED_TOKENS.values(), ids=MALFORMED_TOKENS.keys())
def test_a_token_with_whitespace_or_control_characters_is_a_permanent_error_naming_its_variable(
        svc, shop_sim, monkeypatch, value):
    monkeypatch.setenv("LEAKY_TOKEN", value)
    svc.add_connection("u-env", shop_sim.shop_url("leaky"), "env:LEAKY_TOKEN")
    with pytest.raises(TokenFormatError) as malformed:
        resolve_token("env:LEAKY_TOKEN")
    assert "env:LEAKY_TOKEN" in str(malformed.value) and "strip" in str(malformed.value)
    assert not _pieces_of_token_in(str(malformed.value))

    requests_before = shop_sim.stats("leaky")["total_requests"]
    result = svc.initial_sync("u-env")
    assert not result.success and list(result.data_types) == ["orders"], "every data type would fail alike"
    assert "env:LEAKY_TOKEN" in result.data_types["orders"].error
    assert shop_sim.stats("leaky")["total_requests"] == requests_before, "not sent, so not retried"
    status = svc.get_sync_status("u-env")
    assert status["dataTypes"]["orders"]["error"]["permanent"] is True
    assert status["dataTypes"]["orders"]["error"]["reason"] == "malformed_token"
    assert not _pieces_of_token_in(json.dumps(status, default=str))


# User ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["", "a|b", "two words", "x" * 129])
def test_every_service_method_refuses_an_invalid_user_id(svc, user_id):
    calls = [
        lambda: svc.get_sync_status(user_id),
        lambda: svc.clear_sync_status(user_id, release_lease=True),
        lambda: svc.load_checkpoint(user_id, "initial"),
        lambda: svc.clear_checkpoint(user_id, "initial"),
        lambda: svc.retry_failed_batches(user_id, "initial", "orders"),
        lambda: svc.find_failed_batches("orders", user_id),
        lambda: svc.add_connection(user_id, "acme.myshopify.com", "env:ACME_TOKEN"),
        lambda: svc.remove_connection(user_id),
        lambda: svc.manual_sync(user_id),
    ]
    for call in calls:
        with pytest.raises(InvalidUserIdError):
            call()


def test_the_cli_prints_the_user_id_rule_for_an_empty_user(settings):
    for args in (["status", "--user", ""], ["status", "--user", "a|b", "--json"], ["clear", "--user", ""],
                 ["checkpoint", "show", "--user", "", "--sync-type", "initial"], ["failed-batches", "--user", ""],
                 ["users", "remove", "--user", ""], ["sync", "--user", ""]):
        done = _cli(settings, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "is not usable: use 1-128 letters, digits" in done.stderr, (args, done.stderr)
        assert "ValidationException" not in done.stdout + done.stderr


# Failure summary ---------------------------------------------------------------------------------


def test_a_sync_stopped_mid_fetch_reports_what_its_checkpoint_kept(svc, shop_sim):
    svc.add_connection("u-mid", shop_sim.shop_url("leaky"), f"literal:{TOKEN}", api="rest")
    pages_saved = []

    def freeze_after_two_pages(message: str) -> None:
        pages_saved.append(message)
        if len(pages_saved) == 2:  # the merchant's shop is frozen mid-sync: a permanent error (402)
            shop_sim.set_state("leaky", "frozen")

    try:
        result = svc.initial_sync("u-mid", data_types=("orders",), progress=freeze_after_two_pages)
    finally:
        shop_sim.set_state("leaky", "active")
    outcome = result.data_types["orders"]
    kept = svc.engine.state.load_checkpoint("u-mid", "initial", "orders").state
    assert not result.success and "frozen" in outcome.error
    assert (outcome.pages, outcome.records) == (kept["pages"], kept["records"])
    assert 0 < outcome.pages < 4 and 0 < outcome.records < ORDERS

    rerun = svc.initial_sync("u-mid", data_types=("orders",)).data_types["orders"]
    assert rerun.error is None and rerun.records == ORDERS
    assert rerun.pages_fetched_this_run == rerun.pages - kept["pages"], "the rerun resumed from the checkpoint"


def test_the_cli_summary_says_the_pages_fetched_so_far_are_kept(settings, svc, shop_sim):
    svc.add_connection("u-mid", shop_sim.shop_url("leaky"), f"literal:{TOKEN}", api="rest")
    # Pages 1 and 2 are served, then every page 3 answers 404: a permanent error after 500 orders.
    shop_sim.set_faults("leaky", FaultConfig(rules=(FaultRule("404", endpoint="orders", page=3, times=0),)))
    try:
        done = _cli(settings, "sync", "--user", "u-mid", "--type", "initial", "--data-types", "orders")
    finally:
        shop_sim.set_faults("leaky", FaultConfig())
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"orders\s+500 records\s+2 pages fetched so far, kept for the rerun", done.stdout), done.stdout
    assert "error: " in done.stdout and " 0 records" not in done.stdout


# Stuck status ------------------------------------------------------------------------------------


def _put_status(svc: SyncService, user_id: str, data_type: str, status: str, age_seconds: float) -> None:
    """A status item as a sync writes it, `age_seconds` old (set_status always writes now)."""
    updated = datetime.now(timezone.utc) - timedelta(seconds=age_seconds)
    svc.engine.dynamodb.put_item(TableName=svc.engine.settings.tables.checkpoints, Item={
        "userId": {"S": user_id}, "syncType": {"S": f"status_{data_type}"}, "status": {"S": status},
        "dataType": {"S": data_type}, "sync": {"S": "initial"}, "message": {"S": f"{status}..."},
        "updatedAt": {"S": updated.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    })


def _put_lease(svc: SyncService, user_id: str, data_type: str, expires_in: float) -> None:
    """A lease item as a sync holds it, expiring `expires_in` seconds from now (negative: expired)."""
    now = time.time()
    svc.engine.dynamodb.put_item(TableName=svc.engine.settings.tables.checkpoints, Item={
        "userId": {"S": user_id}, "syncType": {"S": f"lease_{data_type}"}, "owner": {"S": "elsewhere:1:abcdef"},
        "expiresAt": {"N": f"{now + expires_in:.3f}"}, "acquiredAt": {"S": "2026-01-01T00:00:00Z"},
    })


def test_a_sync_in_progress_is_stuck_only_without_a_live_lease_and_after_the_grace(settings, svc):
    old = svc.engine.settings.lease_seconds * 2
    for data_type, status in (("orders", "fetching"), ("products", "fetched"), ("customers", "loading")):
        _put_status(svc, "u-dead", data_type, status, old)  # no lease at all
        _put_status(svc, "u-expired", data_type, status, old)
        _put_lease(svc, "u-expired", data_type, -5)
        _put_status(svc, "u-slow", data_type, status, old)  # a live lease: running, however slowly
        _put_lease(svc, "u-slow", data_type, 60)
        _put_status(svc, "u-between", data_type, status, 1)  # between the fetch and load steps
    _put_status(svc, "u-ended", "orders", "completed", old)
    _put_status(svc, "u-ended", "products", "failed", old)

    def stuck(user_id: str) -> dict[str, bool]:
        return {name: s["stuck"] for name, s in svc.get_sync_status(user_id)["dataTypes"].items()}

    everything = {"orders": True, "products": True, "customers": True}
    assert stuck("u-dead") == everything
    assert stuck("u-expired") == everything
    assert stuck("u-slow") == dict.fromkeys(everything, False)
    assert stuck("u-between") == dict.fromkeys(everything, False)
    assert stuck("u-ended") == {"orders": False, "products": False}

    shown = _cli(settings, "status", "--user", "u-dead").stdout
    assert shown.count("(STUCK: no live lease") == 3, shown
