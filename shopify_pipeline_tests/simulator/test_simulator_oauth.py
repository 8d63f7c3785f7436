"""Expiring offline access tokens over HTTP: grants, rotation, expiry, faults, and shops without auth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shopify_pipeline.simulator import AuthConfig, AuthFaults, ShopConfig, Simulator

from .conftest import VERSION

CLIENT_ID = "client-acme"
CLIENT_SECRET = "secret-acme"
STATIC = "shpat_static_acme"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
OFFLINE = "urn:shopify:params:oauth:token-type:offline-access-token"
INVALID_TOKEN = {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
PAIR_FIELDS = ["access_token", "scope", "expires_in", "refresh_token", "refresh_token_expires_in"]
SHOP_QUERY = "{ shop { name } }"


def auth_shop(name: str = "acme", time_scale: float = 1.0, **auth: Any) -> Simulator:
    config = ShopConfig(name, STATIC, orders=5, products=2, customers=2, seed=3,
                        auth=AuthConfig(CLIENT_ID, CLIENT_SECRET, **auth))
    return Simulator([config, ShopConfig("plain", "shpat_plain", orders=5, seed=3)], time_scale=time_scale)


@pytest.fixture()
def sim() -> Iterator[Simulator]:
    with auth_shop() as running:
        yield running


def token_request(sim: Simulator, as_json: bool = False, shop: str = "acme", **params: Any) -> requests.Response:
    """POST /admin/oauth/access_token with the app's credentials unless given; form-encoded unless as_json."""
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **params}
    url = f"{sim.shop_url(shop)}/admin/oauth/access_token"
    if as_json:
        return requests.post(url, json=body, timeout=10)
    return requests.post(url, data=body, timeout=10)


def install(sim: Simulator, as_json: bool = False) -> dict[str, Any]:
    """An expiring pair from a new authorization code (what a fresh install with expiring=1 gets)."""
    response = token_request(sim, as_json, code=sim.authorization_code("acme"), expiring=1)
    assert response.status_code == 200, response.text
    return response.json()


def refresh(sim: Simulator, refresh_token: str, as_json: bool = False) -> requests.Response:
    return token_request(sim, as_json, grant_type="refresh_token", refresh_token=refresh_token)


def migrate(sim: Simulator, subject_token: str = STATIC, **overrides: Any) -> requests.Response:
    params = {"grant_type": EXCHANGE, "subject_token": subject_token, "subject_token_type": OFFLINE,
              "requested_token_type": OFFLINE, "expiring": "1", **overrides}
    return token_request(sim, True, **params)


def rest(sim: Simulator, token: str, shop: str = "acme") -> requests.Response:
    return requests.get(f"{sim.shop_url(shop)}/admin/api/{VERSION}/shop.json",
                        headers={"X-Shopify-Access-Token": token}, timeout=10)


def graphql(sim: Simulator, token: str, shop: str = "acme") -> requests.Response:
    return requests.post(f"{sim.shop_url(shop)}/admin/api/{VERSION}/graphql.json", json={"query": SHOP_QUERY},
                         headers={"X-Shopify-Access-Token": token}, timeout=10)


def assert_refused(sim: Simulator, token: str) -> None:
    for response in (rest(sim, token), graphql(sim, token)):
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


def assert_accepted(sim: Simulator, token: str) -> None:
    assert rest(sim, token).status_code == 200
    response = graphql(sim, token)
    assert response.status_code == 200
    assert response.json()["data"]["shop"]["name"] == "acme"


def assert_error(response: requests.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["error_description"]


# -- grants ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_authorization_code_with_expiring_gives_a_pair_in_shopifys_shape(sim: Simulator, as_json: bool):
    response = token_request(sim, as_json, code=sim.authorization_code("acme"), expiring=1)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert list(body) == PAIR_FIELDS
    assert body["expires_in"] == 3600
    assert body["refresh_token_expires_in"] == 90 * 86_400
    assert body["scope"] == "read_orders,read_all_orders,read_products,read_customers"
    assert body["access_token"].startswith("shpat_") and body["refresh_token"].startswith("shprt_")
    assert_accepted(sim, body["access_token"])
    # The expiring token replaces the non-expiring one.
    assert_refused(sim, STATIC)
    assert sim.valid_access_tokens("acme") == [body["access_token"]]
    assert sim.valid_refresh_tokens("acme") == [body["refresh_token"]]


def test_an_authorization_code_is_single_use(sim: Simulator):
    code = sim.authorization_code("acme")
    assert token_request(sim, code=code, expiring=1).status_code == 200
    again = token_request(sim, code=code, expiring=1)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_request",
                            "error_description": "The authorization code was not found or was already used"}
    assert_error(token_request(sim, code="made-up", expiring=1), 400, "invalid_request")


def test_authorization_code_without_expiring_gives_the_non_expiring_token(sim: Simulator):
    response = token_request(sim, code=sim.authorization_code("acme"))
    assert response.status_code == 200
    assert response.json() == {"access_token": STATIC,
                               "scope": "read_orders,read_all_orders,read_products,read_customers"}
    assert_accepted(sim, STATIC)
    assert sim.stats("acme")["auth"]["tokens_issued"] == 0


def test_a_new_expiring_token_revokes_the_previous_one(sim: Simulator):
    first = install(sim)
    second = install(sim)
    assert_refused(sim, first["access_token"])
    assert_error(refresh(sim, first["refresh_token"]), 400, "invalid_grant")
    assert_accepted(sim, second["access_token"])


@pytest.mark.parametrize("as_json", [False, True])
def test_refresh_rotates_both_tokens(sim: Simulator, as_json: bool):
    first = install(sim)
    response = refresh(sim, first["refresh_token"], as_json)
    assert response.status_code == 200
    second = response.json()
    assert list(second) == PAIR_FIELDS
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert (second["expires_in"], second["refresh_token_expires_in"]) == (3600, 90 * 86_400)
    # One expiring token per app and shop: the old access token stops working at once.
    assert_refused(sim, first["access_token"])
    assert_accepted(sim, second["access_token"])


def test_token_exchange_migrates_the_non_expiring_token(sim: Simulator):
    assert_accepted(sim, STATIC)
    response = migrate(sim)
    assert response.status_code == 200
    pair = response.json()
    assert list(pair) == PAIR_FIELDS
    assert pair["expires_in"] == 3600
    assert_accepted(sim, pair["access_token"])
    assert_refused(sim, STATIC)
    # A lost migration answer: the same exchange gets the same pair again (until refreshed).
    again = migrate(sim)
    assert again.status_code == 200
    assert (again.json()["access_token"], again.json()["refresh_token"]) == (pair["access_token"],
                                                                             pair["refresh_token"])
    assert sim.stats("acme")["auth"]["tokens_issued"] == 1
    assert refresh(sim, pair["refresh_token"]).status_code == 200
    assert migrate(sim).json() == {"error": "invalid_request", "error_description": "Invalid subject token"}


def test_a_migration_retry_renews_the_access_token_but_not_the_refresh_token():
    with auth_shop(time_scale=3600) as sim:
        first = migrate(sim).json()
        assert (first["expires_in"], first["refresh_token_expires_in"]) == (1, 2160)
        time.sleep(0.5)
        again = migrate(sim).json()
        assert again["access_token"] == first["access_token"]
        assert again["expires_in"] == 1
        assert again["refresh_token_expires_in"] < 2160


def test_a_migration_retry_ends_after_seven_days():
    with auth_shop(time_scale=7 * 86_400 / 0.3) as sim:
        assert migrate(sim).status_code == 200
        time.sleep(0.4)
        assert_error(migrate(sim), 400, "invalid_request")


def test_token_exchange_refusals(sim: Simulator):
    assert_error(migrate(sim, subject_token="shpat_unknown"), 400, "invalid_request")
    assert_error(migrate(sim, subject_token=""), 400, "missing_subject_token")
    assert_error(migrate(sim, subject_token_type="urn:ietf:params:oauth:token-type:id_token"), 400,
                 "invalid_request")
    assert_error(migrate(sim, expiring="0"), 400, "invalid_request")
    assert_accepted(sim, STATIC)


@pytest.mark.parametrize("grant", ["authorization_code", "refresh_token", "token_exchange"])
@pytest.mark.parametrize(("client_id", "client_secret"), [(CLIENT_ID, "wrong"), ("other-app", CLIENT_SECRET)])
def test_wrong_client_credentials_are_refused(sim: Simulator, grant: str, client_id: str, client_secret: str):
    pair = install(sim)
    params = {
        "authorization_code": {"code": sim.authorization_code("acme"), "expiring": "1"},
        "refresh_token": {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]},
        "token_exchange": {"grant_type": EXCHANGE, "subject_token": STATIC, "subject_token_type": OFFLINE,
                           "requested_token_type": OFFLINE, "expiring": "1"},
    }[grant]
    response = token_request(sim, client_id=client_id, client_secret=client_secret, **params)
    assert_error(response, 401, "invalid_client")
    assert sim.valid_refresh_tokens("acme") == [pair["refresh_token"]]


def test_malformed_token_requests(sim: Simulator):
    assert_error(token_request(sim, grant_type="client_credentials"), 400, "unsupported_grant_type")
    assert_error(token_request(sim), 400, "invalid_request")
    url = f"{sim.shop_url('acme')}/admin/oauth/access_token"
    broken = requests.post(url, data="{not json", headers={"Content-Type": "application/json"}, timeout=10)
    assert_error(broken, 400, "invalid_request")


def test_parameters_in_the_query_string_are_accepted(sim: Simulator):
    params = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": sim.authorization_code("acme"),
              "expiring": "1"}
    response = requests.post(f"{sim.shop_url('acme')}/admin/oauth/access_token", params=params, timeout=10)
    assert response.status_code == 200
    assert "refresh_token" in response.json()


# -- rotation -------------------------------------------------------------------------------------


def test_a_lost_refresh_answer_is_fetched_again_with_the_previous_refresh_token(sim: Simulator):
    first = install(sim)
    lost = refresh(sim, first["refresh_token"]).json()  # pretend this answer never arrived
    retried = refresh(sim, first["refresh_token"])
    assert retried.status_code == 200
    second = retried.json()
    assert second["refresh_token"] not in (lost["refresh_token"], first["refresh_token"])
    # The pair that was lost is replaced; the previous refresh token stays until the new pair is used.
    assert_refused(sim, lost["access_token"])
    assert_error(refresh(sim, lost["refresh_token"]), 400, "invalid_grant")
    assert sim.valid_refresh_tokens("acme") == [second["refresh_token"], first["refresh_token"]]
    assert_accepted(sim, second["access_token"])
    # The first API request with the new access token retires the previous refresh token.
    assert sim.valid_refresh_tokens("acme") == [second["refresh_token"]]
    assert_error(refresh(sim, first["refresh_token"]), 400, "invalid_grant")
    assert sim.stats("acme")["auth"]["refreshes"] == 2


def test_using_the_new_refresh_token_retires_its_predecessor(sim: Simulator):
    first = install(sim)
    second = refresh(sim, first["refresh_token"]).json()
    third = refresh(sim, second["refresh_token"]).json()
    # first is retired (its replacement was used); second is kept until third is used.
    assert_error(refresh(sim, first["refresh_token"]), 400, "invalid_grant")
    assert sim.valid_refresh_tokens("acme") == [third["refresh_token"], second["refresh_token"]]
    fourth = refresh(sim, second["refresh_token"]).json()
    assert_refused(sim, third["access_token"])
    assert_accepted(sim, fourth["access_token"])
    assert_error(refresh(sim, second["refresh_token"]), 400, "invalid_grant")
    assert_error(refresh(sim, third["refresh_token"]), 400, "invalid_grant")
    assert refresh(sim, fourth["refresh_token"]).status_code == 200


def test_the_previous_refresh_token_is_kept_thirty_days_at_most():
    with auth_shop(time_scale=30 * 86_400 / 0.3) as sim:
        first = install(sim)
        assert refresh(sim, first["refresh_token"]).status_code == 200
        time.sleep(0.4)
        assert_error(refresh(sim, first["refresh_token"]), 400, "invalid_grant")


def test_refresh_tokens_expire():
    with auth_shop(time_scale=1000, refresh_token_seconds=300) as sim:
        pair = install(sim)
        assert pair["refresh_token_expires_in"] == 0.3
        time.sleep(0.4)
        assert_error(refresh(sim, pair["refresh_token"]), 400, "invalid_grant")
        assert sim.valid_refresh_tokens("acme") == []


def test_rotated_tokens_share_one_rate_limit_bucket():
    config = ShopConfig("acme", STATIC, orders=5, auth=AuthConfig(CLIENT_ID, CLIENT_SECRET))
    with Simulator([config], time_scale=0.001) as sim:
        first = install(sim)
        for _ in range(3):
            rest(sim, first["access_token"])
        second = refresh(sim, first["refresh_token"]).json()
        assert rest(sim, second["access_token"]).headers["X-Shopify-Shop-Api-Call-Limit"] == "4/40"
        assert sim.stats("acme")["bucket_level"] == pytest.approx(4, abs=0.1)


# -- expiry ---------------------------------------------------------------------------------------


def test_access_tokens_expire_in_simulated_time():
    # 3600 Shopify seconds at time scale 7200: half a real second.
    with auth_shop(time_scale=7200) as sim:
        pair = install(sim)
        assert pair["expires_in"] == 0.5
        assert_accepted(sim, pair["access_token"])
        time.sleep(0.6)
        assert_refused(sim, pair["access_token"])
        assert sim.valid_access_tokens("acme") == []
        assert sim.stats("acme")["auth"]["expired_token_rejections"] == 2
        renewed = refresh(sim, pair["refresh_token"])
        assert renewed.status_code == 200
        assert_accepted(sim, renewed.json()["access_token"])


def test_expire_access_tokens_forces_expiry(sim: Simulator):
    pair = install(sim)
    assert_accepted(sim, pair["access_token"])
    assert sim.expire_access_tokens("acme") == 1
    assert sim.expire_access_tokens("acme") == 0
    assert_refused(sim, pair["access_token"])
    assert refresh(sim, pair["refresh_token"]).status_code == 200


def test_bulk_downloads_need_no_token_after_expiry():
    with auth_shop(time_scale=100) as sim:
        token = install(sim)["access_token"]
        mutation = 'mutation { bulkOperationRunQuery(query: "{ orders { edges { node { id } } } }") ' \
                   "{ bulkOperation { id } userErrors { message } } }"
        url = f"{sim.shop_url('acme')}/admin/api/{VERSION}/graphql.json"
        headers = {"X-Shopify-Access-Token": token}
        assert requests.post(url, json={"query": mutation}, headers=headers, timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while sim.bulk_operations("acme")[-1]["status"] != "COMPLETED" and time.monotonic() < deadline:
            time.sleep(0.05)
        sim.expire_access_tokens("acme")
        download = requests.get(sim.bulk_operations("acme")[-1]["url"], timeout=10)
        assert download.status_code == 200
        assert len(download.text.splitlines()) == 5


# -- faults ---------------------------------------------------------------------------------------


def test_refresh_server_errors_change_nothing(sim: Simulator):
    pair = install(sim)
    sim.set_auth_faults("acme", AuthFaults(server_errors=2))
    for _ in range(2):
        failed = refresh(sim, pair["refresh_token"])
        assert failed.status_code == 503
        assert failed.headers["Content-Type"].startswith("text/html")
    assert sim.valid_refresh_tokens("acme") == [pair["refresh_token"]]
    assert_accepted(sim, pair["access_token"])
    assert refresh(sim, pair["refresh_token"]).status_code == 200
    stats = sim.stats("acme")
    assert stats["auth"]["refresh_requests"] == 3
    assert stats["auth"]["refreshes"] == 1
    assert stats["faults_served"]["auth_503"] == 2


def test_server_errors_as_500_and_only_for_the_chosen_grants(sim: Simulator):
    sim.set_auth_faults("acme", AuthFaults(server_errors=1, server_error_status=500))
    pair = install(sim)  # an authorization code is not among the faulty grants
    failed = refresh(sim, pair["refresh_token"])
    assert (failed.status_code, failed.json()) == (500, {"errors": "Internal Server Error"})
    sim.set_auth_faults("acme", AuthFaults(server_errors=1, grant_types=("authorization_code",)))
    assert token_request(sim, code=sim.authorization_code("acme"), expiring=1).status_code == 503


def test_a_lost_refresh_response_rotates_and_the_retry_recovers(sim: Simulator):
    pair = install(sim)
    sim.set_auth_faults("acme", AuthFaults(lost_responses=1))
    with pytest.raises(requests.exceptions.ConnectionError):
        refresh(sim, pair["refresh_token"])
    # The refresh happened: a new pair exists that the client never saw.
    assert pair["access_token"] not in sim.valid_access_tokens("acme")
    assert len(sim.valid_access_tokens("acme")) == 1
    assert_refused(sim, pair["access_token"])
    retried = refresh(sim, pair["refresh_token"])
    assert retried.status_code == 200
    assert_accepted(sim, retried.json()["access_token"])
    stats = sim.stats("acme")
    assert stats["auth"]["refreshes"] == 2
    assert stats["faults_served"]["auth_lost"] == 1
    assert stats["responses"]["0"] == 1


def test_a_lost_migration_response_is_recovered_by_exchanging_again(sim: Simulator):
    sim.set_auth_faults("acme", AuthFaults(lost_responses=1, grant_types=("token_exchange",)))
    with pytest.raises(requests.exceptions.ConnectionError):
        migrate(sim)
    assert_refused(sim, STATIC)
    pair = migrate(sim).json()
    assert sim.valid_access_tokens("acme") == [pair["access_token"]]


def test_revoked_app_rejects_every_token_until_reinstalled(sim: Simulator):
    pair = install(sim)
    code = sim.authorization_code("acme")
    sim.set_auth_faults("acme", AuthFaults(revoked=True))
    assert_refused(sim, pair["access_token"])
    assert sim.valid_access_tokens("acme") == [] and sim.valid_refresh_tokens("acme") == []
    assert_error(refresh(sim, pair["refresh_token"]), 400, "invalid_grant")
    assert_error(token_request(sim, code=code, expiring=1), 400, "invalid_request")
    assert_error(migrate(sim), 400, "invalid_request")
    # Reinstalled: what was revoked stays revoked; a new authorization code works.
    sim.set_auth_faults("acme", AuthFaults())
    assert_refused(sim, pair["access_token"])
    assert_refused(sim, STATIC)
    assert_error(refresh(sim, pair["refresh_token"]), 400, "invalid_grant")
    assert_accepted(sim, install(sim)["access_token"])


def test_revoked_also_ends_the_non_expiring_token():
    with auth_shop(faults=AuthFaults(revoked=True)) as sim:
        assert_refused(sim, STATIC)


# -- observation, admin API, configuration --------------------------------------------------------


def test_stats_count_token_requests_refreshes_and_tokens(sim: Simulator):
    pair = install(sim)
    refresh(sim, pair["refresh_token"])
    refresh(sim, "shprt_wrong")
    auth = sim.stats("acme")["auth"]
    assert auth == {"token_requests": 3, "refresh_requests": 2, "refreshes": 1, "tokens_issued": 2,
                    "expired_token_rejections": 0}
    assert sim.stats("acme")["requests"]["access_token"] == 3


def test_the_token_endpoint_writes_no_token_to_the_console(sim: Simulator, capfd: pytest.CaptureFixture[str]):
    pair = install(sim)
    second = refresh(sim, pair["refresh_token"]).json()
    refresh(sim, pair["refresh_token"])
    output = "".join(capfd.readouterr())
    for secret in (pair["access_token"], pair["refresh_token"], second["refresh_token"], CLIENT_SECRET):
        assert secret not in output


def test_admin_api_for_tests_in_another_process(sim: Simulator):
    admin = f"{sim.base_url}/_simulator/shops/acme"
    code = requests.post(f"{admin}/auth_code", timeout=10).json()["code"]
    pair = token_request(sim, code=code, expiring=1).json()
    tokens = requests.get(f"{admin}/auth_tokens", timeout=10).json()
    assert tokens == {"access_tokens": [pair["access_token"]], "refresh_tokens": [pair["refresh_token"]]}
    assert requests.post(f"{admin}/auth_expire", timeout=10).json() == {"expired": 1}
    assert_refused(sim, pair["access_token"])
    faults = requests.post(f"{admin}/auth_faults", json={"server_errors": 1}, timeout=10).json()
    assert faults["server_errors"] == 1 and faults["grant_types"] == ["refresh_token"]
    assert refresh(sim, pair["refresh_token"]).status_code == 503
    assert requests.post(f"{admin}/auth_faults", json={"typo": 1}, timeout=10).status_code == 400
    plain = requests.post(f"{sim.base_url}/_simulator/shops/plain/auth_code", timeout=10)
    assert plain.status_code == 400


def test_auth_config_from_json():
    data = json.loads('{"name": "acme", "token": "shpat_x", "auth": {"client_id": "c", "client_secret": "s", '
                      '"access_token_seconds": 60, "faults": {"lost_responses": 2, "grant_types": '
                      '["refresh_token", "token_exchange"]}}}')
    config = ShopConfig.from_dict(data)
    assert config.auth == AuthConfig("c", "s", access_token_seconds=60,
                                     faults=AuthFaults(lost_responses=2,
                                                       grant_types=("refresh_token", "token_exchange")))
    assert ShopConfig.from_dict({"name": "a", "token": "t"}).auth is None
    with pytest.raises(ValueError, match="unknown auth fault fields"):
        AuthFaults.from_dict({"lost": 1})
    with pytest.raises(ValueError, match="unknown grant types"):
        AuthFaults(grant_types=("password",))
    with pytest.raises(ValueError, match="server_error_status"):
        AuthFaults(server_error_status=404)


# -- shops without auth ---------------------------------------------------------------------------


def test_shops_without_auth_keep_their_static_token(sim: Simulator):
    assert rest(sim, "shpat_plain", "plain").status_code == 200
    assert graphql(sim, "shpat_plain", "plain").status_code == 200
    for token in ("", "shpat_other", STATIC):
        assert (rest(sim, token, "plain").status_code, rest(sim, token, "plain").json()) == (401, INVALID_TOKEN)
    # No token endpoint: 401 without the static token, 405 with it, as for any unknown POST.
    url = f"{sim.shop_url('plain')}/admin/oauth/access_token"
    anonymous = requests.post(url, data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, timeout=10)
    assert (anonymous.status_code, anonymous.json()) == (401, INVALID_TOKEN)
    with_token = requests.post(url, headers={"X-Shopify-Access-Token": "shpat_plain"}, timeout=10)
    assert with_token.status_code == 405
    assert "auth" not in sim.stats("plain")
    assert sim.stats("plain")["requests"]["unknown"] == 2
    with pytest.raises(ValueError, match="no auth configuration"):
        sim.authorization_code("plain")
    with pytest.raises(ValueError, match="no auth configuration"):
        sim.set_auth_faults("plain", AuthFaults(revoked=True))


def test_an_auth_shop_accepts_its_static_token_until_it_is_replaced(sim: Simulator):
    assert_accepted(sim, STATIC)
    assert sim.valid_access_tokens("acme") == [STATIC]


def test_an_auth_shop_without_a_static_token_needs_an_install():
    with auth_shop(static_token=False) as sim:
        assert_refused(sim, STATIC)
        assert_accepted(sim, install(sim)["access_token"])
