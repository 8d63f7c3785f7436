"""Expiring offline access tokens end to end (issue #14): the simulator's OAuth endpoint (expiring tokens,
rotating refresh tokens), a real local Secrets Manager (moto's server) holding each shop's pair, DynamoDB
Local holding the refresh lock, and syncs in this process and in processes of their own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from shopify_pipeline.settings import SettingsError, ShopifySettings
from shopify_pipeline.shopify.auth import ClientCredentials, ExpiringTokens, OAuthClient, ReconnectError
from shopify_pipeline.shopify.errors import ShopifyTransientError
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.simulator.config import AuthConfig, AuthFaults, FaultConfig
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.support.hostile_server import HostileServer, Huge, Trickle, rule_for
from shopify_pipeline_tests.sync.conftest import stored

CLIENT = AuthConfig("pipeline-app", "app-secret-7f3a", access_token_seconds=3600.0)
CLIENT_REF = "literal:pipeline-app:app-secret-7f3a"
# Shopify's 60-minute tokens last 2 s here: a sync of a few seconds outlives several of them.
TIME_SCALE = 1800.0
SHOPIFY = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=5.0,
                          token_refresh_margin_seconds=0.5)


@pytest.fixture(scope="module")
def sim():
    shops = [ShopConfig("rotating", "shpat_static_rotating", orders=400, products=10, customers=10, seed=31,
                        plan="plus", auth=CLIENT, faults=FaultConfig(latency_seconds=0.3)),
             ShopConfig("migrating", "shpat_static_migrating", orders=30, products=5, customers=5, seed=32,
                        plan="plus", auth=CLIENT),
             # Tokens of a minute (30 Shopify hours): many processes at one expiry, not a stream of expiries.
             ShopConfig("fleet", "shpat_static_fleet", orders=10, products=5, customers=5, seed=33, plan="plus",
                        auth=AuthConfig(CLIENT.client_id, CLIENT.client_secret, access_token_seconds=108_000.0))]
    with Simulator(shops, time_scale=TIME_SCALE) as running:
        yield running


@pytest.fixture
def service(settings, secrets_manager, sim):
    for shop in ("rotating", "migrating", "fleet"):
        sim.set_auth_faults(shop, AuthFaults())
    return SyncService(SyncEngine(settings, SHOPIFY, SyncOptions(slices=1, bulk_threshold=None),
                                  secrets=secrets_manager.client()))


def _connect(service, sim, user: str, shop: str = "rotating"):
    secret = f"test/{user}/{time.time_ns()}"
    return service.connect_expiring(user, sim.shop_url(shop), CLIENT_REF, secret,
                                    code=sim.authorization_code(shop))


def _auth(sim, shop: str = "rotating") -> dict:
    return sim.stats(shop)["auth"]


def test_a_sync_that_outlives_several_tokens_refreshes_them_and_fails_no_page(service, sim, secrets_manager):
    connection = _connect(service, sim, "alice")
    assert connection.auth == "expiring" and connection.token_ref.startswith("secretsmanager:test/alice/")
    before = _auth(sim)
    result = service.sync("alice", "initial")
    assert result.success, result
    assert all(not r.failed_pages for r in result.data_types.values())
    # Tokens lasted 2 s (60 Shopify minutes); the orders' fetch (about 20 requests of 0.3 s) outlived several,
    # each replaced before it ran out.
    after = _auth(sim)
    assert after["refreshes"] - before["refreshes"] >= 2, (before, after)
    assert after["expired_token_rejections"] == before["expired_token_rejections"]
    for data_type in ("orders", "products", "customers"):
        assert stored(service, "alice", data_type) == graphql_truth(sim, "rotating", data_type)
    # The pair in Secrets Manager holds the refresh token Shopify will take next.
    secret = connection.token_ref.removeprefix("secretsmanager:")
    pair = json.loads(secrets_manager.client().get_secret_value(SecretId=secret)["SecretString"])
    assert pair["refresh_token"] in sim.valid_refresh_tokens("rotating")


def test_a_token_shopify_refuses_is_refreshed_once_and_the_request_goes_on(service, sim):
    _connect(service, sim, "bob")
    assert service.sync("bob", "initial", data_types=("customers",)).success
    sim.expire_access_tokens("rotating")  # expired early (Shopify's clock, or another app install)
    before = _auth(sim)
    result = service.sync("bob", data_types=("customers",))
    assert result.success, result
    after = _auth(sim)
    assert after["expired_token_rejections"] > before["expired_token_rejections"]
    assert after["refreshes"] == before["refreshes"] + 1


def test_eight_processes_at_expiry_refresh_once(service, sim, settings, secrets_manager):
    _connect(service, sim, "carol", "fleet")
    assert service.sync("carol", "initial", data_types=("customers",)).success
    sim.expire_access_tokens("fleet")
    before = _auth(sim, "fleet")["refreshes"]
    start_at = time.time() + 3.0  # after every process has started
    children = [_child(settings, secrets_manager, "carol", start_at) for _ in range(8)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0] * 8, outputs
    assert _auth(sim, "fleet")["refreshes"] - before == 1


@pytest.mark.parametrize("point", ["before_refresh", "after_answer", "after_store"])
def test_a_process_killed_at_any_point_of_a_refresh_leaves_the_shop_reachable(service, sim, settings,
                                                                              secrets_manager, point):
    user = f"dave-{point.replace('_', '-')}"
    _connect(service, sim, user)
    sim.expire_access_tokens("rotating")
    killed = _child(settings, secrets_manager, user, time.time(), point)
    killed.communicate(timeout=60)
    assert killed.returncode == -9
    # The next process (a rerun; the dead one's refresh lock is taken over at once on this host) gets on.
    survivor = _child(settings, secrets_manager, user, time.time())
    out, err = survivor.communicate(timeout=60)
    assert survivor.returncode == 0 and out.strip() == "ok", err
    assert service.sync(user, "initial", data_types=("customers",)).success


def test_a_revoked_app_is_a_permanent_reconnect_error_that_says_what_to_do(service, sim):
    _connect(service, sim, "erin")
    sim.set_auth_faults("rotating", AuthFaults(revoked=True))
    try:
        result = service.sync("erin", "initial", data_types=("customers",))
    finally:
        sim.set_auth_faults("rotating", AuthFaults())
    assert not result.success
    status = service.get_sync_status("erin")["dataTypes"]["customers"]
    assert status["error"]["permanent"] is True and status["error"]["reason"] in ("reconnect", "invalid_token")
    assert "Reconnect" in status["message"] or "reconnect" in status["message"]


def test_a_lost_refresh_answer_is_asked_again_with_the_same_refresh_token(service, sim):
    _connect(service, sim, "frank")
    sim.set_auth_faults("rotating", AuthFaults(lost_responses=1, server_errors=1))
    sim.expire_access_tokens("rotating")
    result = service.sync("frank", "initial", data_types=("customers",))
    assert result.success, result
    assert sim.stats("rotating")["faults_served"].get("auth_lost", 0) == 1


def test_a_static_token_of_a_public_app_is_exchanged_for_an_expiring_pair(service, sim):
    connection = service.connect_expiring("grace", sim.shop_url("migrating"), CLIENT_REF,
                                          f"test/grace/{time.time_ns()}",
                                          static_token_ref="literal:shpat_static_migrating")
    assert connection.auth == "expiring"
    assert "shpat_static_migrating" not in sim.valid_access_tokens("migrating")  # the static token is retired
    result = service.sync("grace", "initial")
    assert result.success, result
    assert stored(service, "grace", "orders") == graphql_truth(sim, "migrating", "orders")


def test_an_authorization_code_is_refused_when_used_twice(service, sim):
    code = sim.authorization_code("rotating")
    service.connect_expiring("heidi", sim.shop_url("rotating"), CLIENT_REF, f"test/heidi/{time.time_ns()}", code=code)
    with pytest.raises(ReconnectError, match="Reconnect the shop"):
        service.connect_expiring("heidi", sim.shop_url("rotating"), CLIENT_REF, f"test/heidi/{time.time_ns()}",
                                 code=code)


def test_no_token_refresh_token_or_client_secret_is_ever_printed_or_logged(service, settings, secrets_manager, sim,
                                                                            caplog):
    # Ours at DEBUG, libraries at INFO: botocore's own DEBUG logging prints Secrets Manager answers whole (as it
    # does for any app that reads a secret), so it must stay off in production (docs/production.md).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="shopify_pipeline")
    env = _env(settings, secrets_manager)
    secret = f"test/ivan/{time.time_ns()}"
    cli = [sys.executable, "-m", "shopify_pipeline.cli"]
    runs = [subprocess.run([*cli, "users", "add", "--user", "ivan", "--shop", sim.shop_url("fleet"), "--auth",
                            "expiring", "--client-ref", CLIENT_REF, "--token-secret", secret,
                            "--code", sim.authorization_code("fleet"), "--json"],
                           env=env, capture_output=True, text=True, timeout=120)]
    sim.expire_access_tokens("fleet")  # the sync refreshes
    runs.append(subprocess.run([*cli, "sync", "--user", "ivan", "--data-types", "customers"], env=env,
                               capture_output=True, text=True, timeout=120))
    runs += [subprocess.run([*cli, *command, "--user", "ivan", "--json"], env=env, capture_output=True, text=True,
                            timeout=60) for command in (["status"], ["checkpoint", "show", "--sync-type", "initial"])]
    runs.append(subprocess.run([*cli, "users", "list", "--json"], env=env, capture_output=True, text=True, timeout=60))
    assert [run.returncode for run in runs] == [0] * len(runs), [run.stderr[-500:] for run in runs]
    sim.expire_access_tokens("fleet")  # and once more in this process, where caplog sees every log record
    result = service.sync("ivan", "initial", data_types=("products",))
    assert result.success, result
    printed = "".join(run.stdout + run.stderr for run in runs) + caplog.text + repr(result)
    printed += json.dumps(service.get_sync_status("ivan")) + repr(service.engine.connections.get("ivan"))
    stored_pair = json.loads(secrets_manager.client().get_secret_value(SecretId=secret)["SecretString"])
    secrets = {*sim.valid_access_tokens("fleet"), *sim.valid_refresh_tokens("fleet"), "app-secret-7f3a",
               stored_pair["access_token"], stored_pair["refresh_token"]}
    assert len(secrets) >= 3 and _auth(sim, "fleet")["refreshes"] >= 2
    leaked = [value[:8] for value in secrets if value in printed]
    assert not leaked, f"printed or logged: {leaked}"
    assert "literal:***" in runs[0].stdout  # the client reference is shown masked


def _env(settings, secrets_manager) -> dict[str, str]:
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    return {**os.environ, **secrets_manager.env(), "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url,
            "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix, "SHOPIFY_ALLOW_LOCAL_SHOPS": "1",
            "SHOPIFY_TOKEN_REFRESH_MARGIN_SECONDS": "0.5", "SHOPIFY_PIPELINE_ENV": "local"}


def _child(settings, secrets_manager, user: str, start_at: float, point: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "shopify_pipeline_tests.support.token_child", user, str(start_at)]
    return subprocess.Popen([*command, *([point] if point else [])], env=_env(settings, secrets_manager),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Hostile and unlucky cases (review of issue #14) ---------------------------------------------------------


class _MemoryVault:
    def __init__(self, pair) -> None:
        self.pair, self.saved = pair, []

    def load(self):
        return self.pair

    def save(self, pair) -> None:
        self.pair = pair
        self.saved.append(pair)


class _LockLostOnce:
    """A refresh lock whose first holder finds it lost by the time Shopify answered (its lease ran out)."""

    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self):
        self.acquired += 1
        return self.acquired

    def held(self, handle) -> bool:
        return handle > 1

    def release(self, handle) -> None:
        pass


def test_a_refresher_that_lost_its_lock_stores_nothing_and_the_next_refresh_still_works(sim):
    # The first holder's answer came after its lease ran out: storing that pair could overwrite a newer one.
    # It is dropped unused, so the refresh token stays valid for the next holder (Shopify keeps it until its
    # replacement is used).
    oauth = OAuthClient(sim.shop_url("fleet"), ClientCredentials(CLIENT.client_id, CLIENT.client_secret), SHOPIFY)
    first = oauth.exchange_code(sim.authorization_code("fleet"))
    sim.expire_access_tokens("fleet")
    vault, lock = _MemoryVault(first), _LockLostOnce()
    tokens = ExpiringTokens(vault, lock, oauth, margin_seconds=0.5, sleep=lambda s: None)
    before = _auth(sim, "fleet")["refreshes"]
    token = tokens.rejected(first.access_token)  # Shopify answered 401 to it
    assert lock.acquired == 2 and len(vault.saved) == 1 and vault.pair.access_token == token
    assert _auth(sim, "fleet")["refreshes"] - before == 2  # the dropped pair, then the stored one
    assert token in sim.valid_access_tokens("fleet")
    oauth.close()


@pytest.mark.parametrize("action", [Huge(size=50 * 1024 * 1024), Trickle(body=b'{"access_token":"x"}', interval=0.2)],
                         ids=["huge-answer", "trickled-answer"])
def test_a_hostile_token_endpoint_cannot_hold_or_flood_the_refresh(action):
    with HostileServer() as server:
        server.script(rule_for("/admin/oauth/access_token", action))
        settings = ShopifySettings(allow_local_shops=True, timeout_seconds=1.0)
        oauth = OAuthClient(server.url, ClientCredentials("app", "secret-never-shown"), settings)
        started = time.monotonic()
        with pytest.raises(ShopifyTransientError) as raised:
            oauth.refresh("shprt_whatever")
        oauth.close()
    assert time.monotonic() - started < 5
    assert "secret-never-shown" not in str(raised.value) and raised.value.__context__ is None


def test_a_second_connection_of_the_shop_with_its_own_token_secret_is_refused(service, sim):
    _connect(service, sim, "judy", "migrating")
    with pytest.raises(SettingsError, match="would revoke each other"):
        service.connect_expiring("ken", sim.shop_url("migrating"), CLIENT_REF, f"test/ken/{time.time_ns()}",
                                 code=sim.authorization_code("migrating"))


@pytest.mark.parametrize("margin", [float("nan"), 3600.0, -1.0])
def test_a_refresh_margin_that_would_refresh_on_every_request_is_refused(margin):
    with pytest.raises(SettingsError, match="SHOPIFY_TOKEN_REFRESH_MARGIN_SECONDS"):
        ShopifySettings(token_refresh_margin_seconds=margin).validated()
