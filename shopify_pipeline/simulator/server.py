"""The HTTP server: Shopify's REST and GraphQL endpoints and the OAuth token endpoint under /shops/{shop}/admin/…,
/_simulator/ for tests.

A client addresses a shop by path prefix: where it would call https://{shop}.myshopify.com/admin/…,
it calls http://127.0.0.1:{port}/shops/{shop}/admin/….
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shopify_pipeline.simulator.auth import ShopAuth, TokenAnswer, oauth_error
from shopify_pipeline.simulator.bulk import BulkService
from shopify_pipeline.simulator.config import (
    DATA_TYPES,
    AuthFaults,
    BulkFaults,
    FaultConfig,
    ShopConfig,
    WebhookFaults,
)
from shopify_pipeline.simulator.data import US
from shopify_pipeline.simulator.faults import HTML_BODIES
from shopify_pipeline.simulator.graphql_api import Context, Cursors, GraphQLRequest, respond
from shopify_pipeline.simulator.paging import (
    BadRequest,
    ListRequest,
    PageTokens,
    link_header,
    parse_filters,
    parse_list_request,
    sixty_days_ago,
)
from shopify_pipeline.simulator.shop import ShopRuntime
from shopify_pipeline.simulator.store import RenderCache, dumps, record_filter
from shopify_pipeline.simulator.webhooks import ShopWebhooks, WebhookService

BULK_PATH = re.compile(r"^/bulk/(?P<token>[0-9a-f]+)\.jsonl$")
SHOP_PATH = re.compile(r"^/shops/(?P<shop>[^/]+)(?P<rest>/.*)$")
TOKEN_PATH = "/admin/oauth/access_token"
API_PATH = re.compile(r"^/admin/api/(?P<version>[^/]+)/(?P<resource>[a-z_]+)(?:/(?P<tail>[^/]+))?\.json$")
VERSION_FORMAT = re.compile(r"^\d{4}-(01|04|07|10)$")
ADMIN_PATH = re.compile(r"^/_simulator/shops/(?P<shop>[^/]+)/(?P<what>[a-z_]+)(?:/(?P<type>[a-z]+))?"
                        r"(?:/(?P<action>[a-z]+))?$")

INVALID_TOKEN = {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
NOT_FOUND = {"errors": "Not Found"}
THROTTLED = {"errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume "
                       "uninterrupted service."}
SCOPES_NEEDED = {"orders": "read_orders", "products": "read_products", "customers": "read_customers"}


class Answer:
    """A response to send: status, body bytes, headers and an optional fault that alters delivery."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                 content_type: str = "application/json; charset=utf-8") -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type


def json_answer(status: int, document: Any, headers: dict[str, str] | None = None) -> Answer:
    """A JSON answer."""
    return Answer(status, dumps(document), headers)


class Simulator:
    """A local Shopify Admin API (REST and GraphQL) serving several shops on 127.0.0.1.

    `time_scale` speeds up the leaky bucket (10 → leaks ten times faster, Retry-After ten times
    shorter), the cost bucket, bulk operations, token lifetimes and webhook retries; everything else runs in
    real time.
    """

    def __init__(self, shops: list[ShopConfig], port: int = 0, time_scale: float = 1.0,
                 cache_bytes: int = 256 * 1024 * 1024) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.port = port
        self.time_scale = time_scale
        self.anchor = int(time.time())
        self.tokens = PageTokens(secrets.token_bytes(16))
        self.cursors = Cursors(secrets.token_bytes(16))
        self.cache = RenderCache(cache_bytes)
        self.shops: dict[str, ShopRuntime] = {}
        for config in shops:
            if config.name in self.shops:
                raise ValueError(f"shop {config.name!r} is configured twice")
            self.shops[config.name] = ShopRuntime(config, time_scale, self.anchor, self.cache)
        self.bulk = BulkService(time_scale, lambda: self.base_url, self.cursors)
        self.webhooks = WebhookService(time_scale, self.cursors, self.shop_document)
        self.bulk.listeners.append(self.webhooks.bulk_created)
        for runtime in self.shops.values():
            self.webhooks.shop(runtime)
        self.stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Listen on 127.0.0.1 (a free port when port=0) and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        simulator = self

        class Handler(RequestHandler):
            sim = simulator

        self.stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll interval so stop() returns quickly.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="shopify-simulator", daemon=True)
        self._thread.start()
        self.webhooks.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests that hang or wait are released at once."""
        if self._server is None:
            return
        self.stopping.set()
        self.bulk.close()
        self.webhooks.close()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """E.g. "http://127.0.0.1:8123" (the port is known once started)."""
        return f"http://127.0.0.1:{self.port}"

    def shop_url(self, shop_name: str) -> str:
        """The base a client uses instead of https://{shop}.myshopify.com."""
        self._shop(shop_name)
        return f"{self.base_url}/shops/{shop_name}"

    # -- run-time control and observation ----------------------------------------------------------

    def _shop(self, shop_name: str) -> ShopRuntime:
        try:
            return self.shops[shop_name]
        except KeyError:
            raise KeyError(f"no simulated shop named {shop_name!r}") from None

    def set_faults(self, shop_name: str, faults: FaultConfig) -> None:
        """Serve `faults` on this shop from the next request on (rule counters restart)."""
        self._shop(shop_name).set_faults(faults)

    def set_state(self, shop_name: str, state: str) -> None:
        """Make the shop "active", "frozen" (402) or "locked" (423)."""
        self._shop(shop_name).set_state(state)

    def set_scopes(self, shop_name: str, scopes: tuple[str, ...]) -> None:
        """Change the scopes granted to the shop's token."""
        self._shop(shop_name).scopes = tuple(scopes)

    def set_bulk_faults(self, shop_name: str, faults: BulkFaults) -> None:
        """Apply `faults` to this shop's bulk operations created from now on."""
        self.bulk.shop(self._shop(shop_name)).set_faults(faults)

    def bulk_operations(self, shop_name: str) -> list[dict[str, Any]]:
        """Every bulk operation of the shop, oldest first, as `bulkOperation(id:)` shows it."""
        return self.bulk.shop(self._shop(shop_name)).documents()

    def expire_bulk_urls(self, shop_name: str) -> list[str]:
        """Make the shop's bulk result URLs expire now (403; COMPLETED becomes EXPIRED). Returns the ids."""
        return self.bulk.shop(self._shop(shop_name)).expire()

    def stats(self, shop_name: str) -> dict[str, Any]:
        """Counters: requests per endpoint, responses per status, 429s (`throttled`), bucket level, `webhooks`
        (as webhook_stats); for a shop with `auth` also `auth` (token_requests, refresh_requests, refreshes,
        tokens_issued, expired_token_rejections)."""
        return {**self._shop(shop_name).stats(), "webhooks": self.webhook_stats(shop_name)}

    def shop_document(self, shop: ShopRuntime) -> dict[str, Any]:
        """The shop as shop.json serves it (and as the app/uninstalled payload carries it)."""
        offset = shop.config.timezone_offset_minutes
        sign = "-" if offset < 0 else "+"
        hours, minutes = divmod(abs(offset), 60)
        return {
            "id": 548_380_009 + sum(shop.name.encode()),
            "name": shop.name,
            "email": f"owner@{shop.name}.example.com",
            "domain": f"{shop.name}.myshopify.com",
            "myshopify_domain": f"{shop.name}.myshopify.com",
            "plan_name": shop.config.plan,
            "plan_display_name": shop.config.plan.title(),
            "timezone": f"(GMT{sign}{hours:02d}:{minutes:02d}) Simulated Time",
            "iana_timezone": "America/New_York" if offset == -300 else "Etc/Unknown",
            "currency": "USD",
            "money_format": "${{amount}}",
            "created_at": shop.data.renderer.timestamp((self.anchor - shop.config.history_days * 86_400) * US),
            "password_enabled": False,
            "country_code": "US",
        }

    # -- webhooks ----------------------------------------------------------------------------------

    def _webhooks(self, shop_name: str) -> ShopWebhooks:
        return self.webhooks.shop(self._shop(shop_name))

    def subscribe(self, shop_name: str, topic: str, url: str, include_fields: tuple[str, ...] = (),
                  api_version: str | None = None) -> str:
        """Subscribe `url` to `topic` ("orders/create" or "ORDERS_CREATE"), as webhookSubscriptionCreate does;
        payloads are serialized for `api_version` (default: the newest supported). Returns the subscription's gid.
        ValueError with Shopify's message for an address already subscribed to the topic or not deliverable."""
        return self._webhooks(shop_name).subscribe(topic, url, tuple(include_fields), api_version).id

    def unsubscribe(self, shop_name: str, subscription_id: str) -> bool:
        """Delete a subscription (its pending deliveries and retries are cancelled). Returns whether it existed."""
        return self._webhooks(shop_name).unsubscribe(subscription_id)

    def webhook_subscriptions(self, shop_name: str) -> list[dict[str, Any]]:
        """Every subscription of the shop, oldest first, as the GraphQL WebhookSubscription shows it."""
        return self._webhooks(shop_name).documents()

    def set_compliance_webhook_url(self, shop_name: str, url: str | None) -> None:
        """Where customers/data_request, customers/redact and shop/redact go (None: not configured)."""
        self._webhooks(shop_name).set_compliance_url(url)

    def webhook_secret(self, shop_name: str) -> str:
        """The client secret deliveries are signed with (AuthConfig.client_secret, else ShopConfig.webhook_secret,
        else "shpss_<shop>")."""
        return self._shop(shop_name).config.app_secret

    def set_webhook_faults(self, shop_name: str, faults: WebhookFaults) -> None:
        """Apply these delivery faults to events from now on."""
        self._webhooks(shop_name).set_faults(faults)

    def webhook_stats(self, shop_name: str) -> dict[str, Any]:
        """Delivery counters: events, delivered, failed_attempts, retries, dropped, lost, cancelled,
        duplicates_sent, stale_sent, bad_signatures_sent, reordered, subscriptions_removed, pending, subscriptions,
        and by_topic (events, delivered, failed_attempts, dropped, … per topic)."""
        return self._webhooks(shop_name).stats()

    def webhook_attempts(self, shop_name: str) -> list[dict[str, Any]]:
        """The shop's last 10 000 delivery attempts, oldest first (event_id, webhook_id, topic, url, attempt,
        kind, bad_signature, status, error, at)."""
        return self._webhooks(shop_name).attempts()

    def wait_webhooks_idle(self, shop_name: str, timeout: float = 30.0) -> bool:
        """Wait until none of the shop's deliveries is queued, held, in flight or waiting for a retry (dropped
        ones are done). Returns False if `timeout` real seconds passed first."""
        return self._webhooks(shop_name).wait_idle(timeout)

    def trigger_app_uninstalled(self, shop_name: str) -> str | None:
        """Uninstall the app: the shop's tokens stop working (401, as Shopify revokes them), and app/uninstalled
        (payload: the shop) goes to its subscribers. Returns the X-Shopify-Event-Id, or None when nobody is
        subscribed. `reinstall` undoes it."""
        self._shop(shop_name).installed = False
        return self._webhooks(shop_name).trigger_app_uninstalled()

    def reinstall(self, shop_name: str) -> None:
        """The merchant installs the app again: the shop's token works again."""
        self._shop(shop_name).installed = True

    def trigger_customers_redact(self, shop_name: str, customer_id: int,
                                 orders_to_redact: list[int] | None = None) -> str | None:
        """Send customers/redact to the compliance URL; `orders_to_redact` defaults to the customer's live orders.
        Returns the event id, or None without a compliance URL."""
        return self._webhooks(shop_name).trigger_customers_redact(customer_id, orders_to_redact)

    def trigger_customers_data_request(self, shop_name: str, customer_id: int,
                                       orders_requested: list[int] | None = None) -> str | None:
        """Send customers/data_request to the compliance URL; `orders_requested` defaults to the customer's live
        orders. Returns the event id, or None without a compliance URL."""
        return self._webhooks(shop_name).trigger_customers_data_request(customer_id, orders_requested)

    def trigger_shop_redact(self, shop_name: str) -> str | None:
        """Send shop/redact to the compliance URL. Returns the event id, or None without a compliance URL."""
        return self._webhooks(shop_name).trigger_shop_redact()

    def _auth(self, shop_name: str) -> ShopAuth:
        auth = self._shop(shop_name).auth
        if auth is None:
            raise ValueError(f"shop {shop_name!r} has no auth configuration (ShopConfig.auth)")
        return auth

    def authorization_code(self, shop_name: str) -> str:
        """A single-use authorization code, as the redirect after the merchant approves the app carries it."""
        return self._auth(shop_name).authorization_code()

    def set_auth_faults(self, shop_name: str, faults: AuthFaults) -> None:
        """Serve these token endpoint faults from the next request on (`revoked` revokes every token now)."""
        self._auth(shop_name).set_faults(faults)

    def expire_access_tokens(self, shop_name: str) -> int:
        """Make the shop's expiring access token expire now. Returns how many expired (0 or 1)."""
        return self._auth(shop_name).expire_access_tokens()

    def valid_access_tokens(self, shop_name: str) -> list[str]:
        """The access tokens API requests are accepted with right now: the non-expiring one if still valid,
        then the active expiring one."""
        return self._auth(shop_name).valid_access_tokens()

    def valid_refresh_tokens(self, shop_name: str) -> list[str]:
        """The refresh tokens a refresh is accepted with right now: the newest, then the one kept for a retry."""
        return self._auth(shop_name).valid_refresh_tokens()

    def records(self, shop_name: str, data_type: str, rest: bool = False) -> list[dict[str, Any]]:
        """The source of truth: every live record as a parsed document (ids stay ints), by id.

        Whole documents, as GraphQL serves them; `rest=True` gives them as REST serves them (products
        cut to their first 100 variants).
        """
        data = self._shop(shop_name).data
        render = data.rest_bytes if rest else data.render_bytes
        with data.lock:
            live = [record for record in data.collections[data_type].items if not record.deleted]
        return [json.loads(render(data_type, record)) for record in live]

    def record_versions(self, shop_name: str, data_type: str) -> dict[int, str]:
        """A cheap digest of the source of truth: id → updated_at of every live record."""
        data = self._shop(shop_name).data
        with data.lock:
            return {record.id: data.renderer.timestamp(record.updated)
                    for record in data.collections[data_type].items if not record.deleted}

    def deleted_ids(self, shop_name: str, data_type: str) -> list[int]:
        """Ids deleted since start, in deletion order."""
        data = self._shop(shop_name).data
        subject = {"orders": "Order", "products": "Product", "customers": "Customer"}[data_type]
        with data.lock:
            return [event.subject_id for event in data.events.items if event.subject_type == subject]

    def update_records(self, shop_name: str, data_type: str, n: int = 1, seed: int = 0,
                       ids: list[int] | None = None) -> list[int]:
        """Update n live records chosen by `seed` (or exactly `ids`); updated_at moves forward. Returns ids."""
        return self._shop(shop_name).data.update(_check_type(data_type), n, seed, ids)

    def create_records(self, shop_name: str, data_type: str, n: int = 1, seed: int = 0) -> list[int]:
        """Create n records now, with ids above every existing one. Returns their ids."""
        return self._shop(shop_name).data.create(_check_type(data_type), n, seed)

    def delete_records(self, shop_name: str, data_type: str, n: int = 1, seed: int = 0,
                       ids: list[int] | None = None) -> list[int]:
        """Delete n live records (or exactly `ids`); each shows in events.json. Returns their ids."""
        return self._shop(shop_name).data.delete(_check_type(data_type), n, seed, ids)


def _check_type(data_type: str) -> str:
    if data_type not in DATA_TYPES:
        raise ValueError(f"unknown data type {data_type!r}; expected one of {', '.join(DATA_TYPES)}")
    return data_type


class RequestHandler(BaseHTTPRequestHandler):
    """Routes one request; `sim` is set on a subclass per Simulator."""

    sim: Simulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each keep-alive request waits ~40 ms.
    disable_nagle_algorithm = True
    server_version = "ShopifySimulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        """Quiet: tests read stats instead of logs."""

    # -- plumbing ----------------------------------------------------------------------------------

    def _send(self, answer: Answer, truncate: bool = False) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("X-Request-Id", str(uuid.uuid4()))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if truncate:
            # Promise the whole body, deliver part of it, hang up: the client sees an incomplete read.
            self.wfile.write(answer.body[: len(answer.body) // 2])
            self.wfile.flush()
            self._drop_connection()
            return
        self.wfile.write(answer.body)

    def _drop_connection(self) -> None:
        """Close the socket with a TCP reset and no response (linger 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _body_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    # -- entry points ------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """Serve Shopify endpoints and the read side of the admin API."""
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Serve GraphQL queries and the write side of the admin API (REST endpoints are read-only here)."""
        self._route("POST")

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        if split.path.startswith("/_simulator/"):
            try:
                self._send(self._admin(method, split.path))
            except (ValueError, KeyError, TypeError) as error:
                self._send(json_answer(400, {"errors": str(error)}))
            return
        bulk = BULK_PATH.match(split.path)
        if bulk is not None and method == "GET":
            self._bulk_download(bulk["token"], parse_qs(split.query).get("signature", [None])[-1])
            return
        match = SHOP_PATH.match(split.path)
        shop = self.sim.shops.get(match["shop"]) if match else None
        if shop is None or match is None:
            self._send(json_answer(404, NOT_FOUND))
            return
        query = parse_qs(split.query, keep_blank_values=True)
        if method == "POST" and match["rest"] == TOKEN_PATH and shop.auth is not None:
            self._token_request(shop, shop.auth, query)
            return
        self._shop_request(shop, method, match["rest"], query)

    # -- Shopify's side ----------------------------------------------------------------------------

    def _token_request(self, shop: ShopRuntime, auth: ShopAuth, query: dict[str, list[str]]) -> None:
        """POST /admin/oauth/access_token: a grant from a JSON or form body, or a fault from AuthFaults."""
        shop.count_request("access_token")
        params = {name: values[-1] for name, values in query.items()}
        try:
            params.update(self._token_params())
        except ValueError:
            answer = oauth_error(400, "invalid_request", "The request body is not valid JSON or form data.")
        else:
            answer = auth.grant(params)
        if answer.fault == "lost":
            shop.count_response(0, "auth_lost")
            self._drop_connection()
            return
        if answer.fault is not None:
            response = self._fault_answer(answer.fault, shop, {})
            shop.count_response(response.status, f"auth_{answer.fault}")
            self._send(response)
            return
        shop.count_response(answer.status, None)
        self._send(self._token_answer(answer))

    @staticmethod
    def _token_answer(answer: TokenAnswer) -> Answer:
        # RFC 6749 5.1: token responses must not be cached.
        return json_answer(answer.status, answer.body, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _token_params(self) -> dict[str, str]:
        """The token request's parameters from its body: JSON or application/x-www-form-urlencoded."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8") if length else ""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not raw.strip():
            return {}
        if content_type == "application/json" or (content_type != "application/x-www-form-urlencoded"
                                                  and raw.lstrip().startswith("{")):
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise ValueError("a token request's JSON body is an object")
            return {str(name): _param(value) for name, value in document.items() if value is not None}
        return {name: values[-1] for name, values in parse_qs(raw, keep_blank_values=True).items()}

    def _shop_request(self, shop: ShopRuntime, method: str, rest: str,
                      query: dict[str, list[str]]) -> None:
        endpoint, version, resource, tail = self._endpoint(rest)
        shop.count_request(endpoint)
        graphql_request = None
        aliases: tuple[str, ...] = ()
        if endpoint == "graphql" and method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            graphql_request = GraphQLRequest.read(body, self.headers.get("Content-Type") or "")
            aliases, page, limit = graphql_request.fault_keys(self.sim.cursors)
            shop.count_graphql_roots(aliases)
        else:
            page_info = query.get("page_info", [None])[-1]
            page = self.sim.tokens.peek_page(page_info)
            try:
                limit = int(query.get("limit", ["50"])[-1])
            except ValueError:
                limit = 50
        fault = shop.faults.choose(endpoint, page, limit, aliases)
        config = shop.faults.config
        if config.latency_seconds > 0:
            self.sim.stopping.wait(config.latency_seconds)
        if fault in ("reset", "hang"):
            if fault == "hang":
                self.sim.stopping.wait(config.hang_seconds)
            shop.count_response(0, fault)
            self._drop_connection()
            return
        if graphql_request is not None:
            answer = self._graphql_answer(shop, version or "", graphql_request, fault)
        else:
            answer = self._answer(shop, method, endpoint, version, resource, tail, query, fault)
        if fault in ("truncate", "malformed") and answer.status == 200:
            shop.count_response(answer.status, fault)
            if fault == "malformed":
                answer.body = answer.body[: max(1, len(answer.body) // 2)]
            self._send(answer, truncate=fault == "truncate")
            return
        shaped = answer.status >= 400 or (graphql_request is not None and fault in ("throttled", "partial"))
        applied = fault if fault not in ("truncate", "malformed") and shaped else None
        shop.count_response(answer.status, applied)
        self._send(answer)

    @staticmethod
    def _endpoint(rest: str) -> tuple[str, str | None, str | None, str | None]:
        """(endpoint name for stats and fault rules, API version, resource, tail) of a shop path."""
        if rest == "/admin/oauth/access_scopes.json":
            return "access_scopes", None, None, None
        match = API_PATH.match(rest)
        if match is None:
            return "unknown", None, None, None
        resource, tail = match["resource"], match["tail"]
        if tail is None:
            name = resource
        elif tail == "count":
            name = f"{resource}/count"
        else:
            name = f"{resource}/show"
        return name, match["version"], resource, tail

    def _answer(self, shop: ShopRuntime, method: str, endpoint: str, version: str | None,
                resource: str | None, tail: str | None, query: dict[str, list[str]],
                fault: str | None) -> Answer:
        """Checks in Shopify's order (auth, shop state, rate limit, version, scope), then the endpoint."""
        refused = self._refused(shop)
        if refused is not None:
            return refused
        token = self.headers.get("X-Shopify-Access-Token")
        bucket = shop.bucket(shop.bucket_key(token))
        if fault == "429" or not bucket.take():
            headers = {"Retry-After": bucket.retry_after_header()}
            if shop.faults.config.call_limit_header_on_429:
                headers["X-Shopify-Shop-Api-Call-Limit"] = f"{bucket.size}/{bucket.size}"
            return json_answer(429, THROTTLED, headers)
        headers = {"X-Shopify-Shop-Api-Call-Limit": bucket.call_limit_header()}
        answered_version = None
        if version is not None:
            answered_version = self._answered_version(shop, version)
            if answered_version is None:
                return json_answer(404, NOT_FOUND, headers)
            headers["X-Shopify-API-Version"] = answered_version
        if method != "GET" or endpoint == "unknown":
            return json_answer(404 if method == "GET" else 405, NOT_FOUND, headers)
        needed = SCOPES_NEEDED.get(resource or "")
        if needed and needed not in shop.scopes:
            return json_answer(403, {"errors": f"[API] This action requires merchant approval for {needed} "
                                               "scope."}, headers)
        if fault in ("500", "502", "503", "504", "430", "404"):
            return self._fault_answer(fault, shop, headers)
        try:
            return self._resource(shop, endpoint, resource, tail, query, headers, answered_version)
        except BadRequest as error:
            return json_answer(400, error.body, headers)

    def _refused(self, shop: ShopRuntime) -> Answer | None:
        """Shopify's first checks, the same for REST and GraphQL: the token, then the shop's state."""
        if not shop.accepts(self.headers.get("X-Shopify-Access-Token")):
            return json_answer(401, INVALID_TOKEN)
        if shop.state == "frozen":
            return json_answer(402, {"errors": "Unavailable Shop"})
        if shop.state == "locked":
            return json_answer(423, {"errors": "This shop is unavailable"})
        return None

    def _graphql_answer(self, shop: ShopRuntime, version: str, request: GraphQLRequest,
                        fault: str | None) -> Answer:
        """POST graphql.json: REST's checks (auth, shop state, version), then faults, then cost and the query."""
        refused = self._refused(shop)
        if refused is not None:
            return refused
        token = shop.bucket_key(self.headers.get("X-Shopify-Access-Token"))
        answered_version = self._answered_version(shop, version)
        if answered_version is None:
            return json_answer(404, NOT_FOUND)
        headers = {"X-Shopify-API-Version": answered_version}
        if fault == "429":
            return json_answer(429, THROTTLED, {**headers, "Retry-After": shop.bucket(token).retry_after_header()})
        if fault in ("500", "502", "503", "504", "430", "404"):
            return self._fault_answer(fault, shop, headers)
        context = Context(shop, self.sim.cursors, self.sim.shop_document(shop), api_version=answered_version,
                          bulk=self.sim.bulk.shop(shop), webhooks=self.sim.webhooks.shop(shop))
        document, throttled = respond(request, context, shop.cost_bucket(token), fault)
        if throttled:
            shop.count_graphql_throttled()
        return json_answer(200, document, headers)

    def _bulk_download(self, token: str, signature: str | None) -> None:
        """A bulk result file, streamed from disk: Range requests, expiry, dropped connections on demand."""
        download = self.sim.bulk.download(token, signature, self.headers.get("Range"))
        if download.shop is not None:
            download.shop.count_request("bulk_download")
            download.shop.count_response(0 if download.drop_after else download.status,
                                         "bulk_drop" if download.drop_after else None)
        if download.path is None:
            self._send(Answer(download.status, download.body, download.headers, download.content_type))
            return
        self.send_response(download.status)
        self.send_header("Content-Type", download.content_type)
        self.send_header("Content-Length", str(download.length))
        for name, value in download.headers.items():
            self.send_header(name, value)
        self.end_headers()
        limit = min(download.drop_after, download.length) if download.drop_after else download.length
        with open(download.path, "rb") as source:
            source.seek(download.start)
            left = limit
            while left > 0:
                chunk = source.read(min(left, 256 * 1024))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
        if download.drop_after:
            # Hang up after what was sent (FIN, so those bytes arrive): the client sees a short body.
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)

    def _answered_version(self, shop: ShopRuntime, version: str) -> str | None:
        """The version that answers: itself, the oldest supported if retired, None if unknown."""
        supported = sorted(shop.config.api_versions)
        if version == "unstable":
            return version
        if not VERSION_FORMAT.match(version) or version > supported[-1]:
            return None
        return version if version >= supported[0] else supported[0]

    def _fault_answer(self, fault: str, shop: ShopRuntime, headers: dict[str, str]) -> Answer:
        status = int(fault)
        if status == 500:
            return json_answer(500, {"errors": "Internal Server Error"}, headers)
        if status == 404:
            return json_answer(404, NOT_FOUND, headers)
        if status == 504:
            self.sim.stopping.wait(shop.faults.config.gateway_timeout_seconds)
        return Answer(status, HTML_BODIES[status].encode(), headers, "text/html; charset=utf-8")

    def _resource(self, shop: ShopRuntime, endpoint: str, resource: str | None, tail: str | None,
                  query: dict[str, list[str]], headers: dict[str, str], version: str | None) -> Answer:
        if endpoint == "access_scopes":
            scopes = [{"handle": scope} for scope in shop.scopes]
            return json_answer(200, {"access_scopes": scopes}, headers)
        if endpoint == "shop":
            return json_answer(200, {"shop": self.sim.shop_document(shop)}, headers)
        if resource not in (*DATA_TYPES, "events"):
            return json_answer(404, NOT_FOUND, headers)
        if tail == "count":
            filters = parse_filters(resource, query, shop.data.renderer.tz)
            matches = record_filter(filters, self._window(shop, resource))
            collection = shop.data.events if resource == "events" else shop.data.collections[resource]
            with shop.data.lock:
                return json_answer(200, {"count": collection.count(matches)}, headers)
        if tail is not None:
            return self._show(shop, resource, tail, query, headers)
        request = parse_list_request(resource, query, self.sim.tokens, shop.data.renderer.tz)
        return self._list(shop, resource, request, headers, version or "")

    @staticmethod
    def _window(shop: ShopRuntime, resource: str) -> int | None:
        """The oldest visible created_at: orders are limited to 60 days without read_all_orders."""
        if resource == "orders" and "read_all_orders" not in shop.scopes:
            return sixty_days_ago(time.time())
        return None

    def _show(self, shop: ShopRuntime, resource: str, tail: str, query: dict[str, list[str]],
              headers: dict[str, str]) -> Answer:
        if resource == "events" or not tail.isdigit():
            return json_answer(404, NOT_FOUND, headers)
        data = shop.data
        with data.lock:
            record = data.collections[resource].by_id.get(int(tail))
            window = self._window(shop, resource)
            if record is None or record.deleted or (window is not None and record.created < window * US):
                return json_answer(404, NOT_FOUND, headers)
            body = data.rest_bytes(resource, record)
        fields = query.get("fields", [""])[-1]
        singular = resource[:-1]
        if fields:
            document = _pick(json.loads(body), fields.split(","))
            return json_answer(200, {singular: document}, headers)
        return Answer(200, b'{"' + singular.encode() + b'":' + body + b"}", headers)

    def _list(self, shop: ShopRuntime, resource: str, request: ListRequest, headers: dict[str, str],
              version: str) -> Answer:
        data = shop.data
        matches = record_filter(request.filters, self._window(shop, resource))
        collection = data.events if resource == "events" else data.collections[resource]
        sort_attribute = {"id": "id", "created_at": "created", "updated_at": "updated"}[request.order[0]]
        with data.lock:
            found, more = collection.page(request, matches)
            # Cursors come from the keys as served: a record may change the moment the lock is released.
            first_key = (getattr(found[0], sort_attribute), found[0].id) if found else None
            last_key = (getattr(found[-1], sort_attribute), found[-1].id) if found else None
            # Snapshot what to render while the lock guarantees versions match timestamps.
            if resource == "events":
                documents = [dumps(_pick(data.render_event(event), request.fields)) for event in found]
            else:
                documents = [data.rest_bytes(resource, record) for record in found]
        if request.fields and resource != "events":
            documents = [dumps(_pick(json.loads(body), request.fields)) for body in documents]
        after = last_key if more or request.direction == "prev" else None
        before = first_key if request.cursor is not None and (request.direction == "next" or more) else None
        url = f"{self.sim.shop_url(shop.name)}/admin/api/{version}/{resource}.json"
        link = link_header(url, request, self.sim.tokens, before, after)
        if link:
            headers["Link"] = link
        body = b'{"' + resource.encode() + b'":[' + b",".join(documents) + b"]}"
        return Answer(200, body, headers)

    # -- the simulator's own admin API -------------------------------------------------------------

    def _admin(self, method: str, path: str) -> Answer:
        if path == "/_simulator/shops":
            shops = [{"name": name, "url": self.sim.shop_url(name), "token": shop.token}
                     for name, shop in self.sim.shops.items()]
            return json_answer(200, {"shops": shops})
        match = ADMIN_PATH.match(path)
        if match is None or match["shop"] not in self.sim.shops:
            return json_answer(404, NOT_FOUND)
        name, what = match["shop"], match["what"]
        shop = self.sim.shops[name]
        if what == "stats" and method == "GET":
            return json_answer(200, self.sim.stats(name))
        if what == "faults":
            if method == "POST":
                shop.set_faults(FaultConfig.from_dict(self._body_json()))
            return json_answer(200, shop.faults.config.to_dict())
        if what == "state" and method == "POST":
            body = self._body_json()
            if "state" in body:
                shop.set_state(body["state"])
            if "scopes" in body:
                shop.scopes = tuple(body["scopes"])
            return json_answer(200, {"state": shop.state, "scopes": list(shop.scopes)})
        if what == "bulk" and method == "GET":
            return json_answer(200, {"bulk_operations": self.sim.bulk_operations(name)})
        if what == "bulk_faults":
            bulk = self.sim.bulk.shop(shop)
            if method == "POST":
                bulk.set_faults(BulkFaults.from_dict(self._body_json()))
            return json_answer(200, bulk.faults.to_dict())
        if what == "bulk_expire" and method == "POST":
            return json_answer(200, {"expired": self.sim.expire_bulk_urls(name)})
        if what.startswith("auth_"):
            return self._admin_auth(method, name, what)
        if what.startswith("webhook"):
            return self._admin_webhooks(method, name, what)
        if what == "records" and match["type"] in DATA_TYPES:
            return self._admin_records(method, name, match["type"], match["action"])
        return json_answer(404, NOT_FOUND)

    def _admin_auth(self, method: str, name: str, what: str) -> Answer:
        auth = self.sim.shops[name].auth
        if auth is None:
            return json_answer(400, {"errors": f"shop {name!r} has no auth configuration (ShopConfig.auth)"})
        if what == "auth_faults":
            if method == "POST":
                auth.set_faults(AuthFaults.from_dict(self._body_json()))
            return json_answer(200, auth.faults.to_dict())
        if what == "auth_code" and method == "POST":
            return json_answer(200, {"code": auth.authorization_code()})
        if what == "auth_expire" and method == "POST":
            return json_answer(200, {"expired": auth.expire_access_tokens()})
        if what == "auth_tokens" and method == "GET":
            return json_answer(200, {"access_tokens": auth.valid_access_tokens(),
                                     "refresh_tokens": auth.valid_refresh_tokens()})
        return json_answer(404, NOT_FOUND)

    def _admin_webhooks(self, method: str, name: str, what: str) -> Answer:
        sim = self.sim
        if what == "webhooks" and method == "GET":
            return json_answer(200, {"subscriptions": sim.webhook_subscriptions(name),
                                     "stats": sim.webhook_stats(name)})
        if what == "webhook_attempts" and method == "GET":
            return json_answer(200, {"attempts": sim.webhook_attempts(name)})
        if what == "webhook_faults":
            webhooks = sim.webhooks.shop(sim.shops[name])
            if method == "POST":
                webhooks.set_faults(WebhookFaults.from_dict(self._body_json()))
            return json_answer(200, webhooks.faults.to_dict())
        if method != "POST":
            return json_answer(404, NOT_FOUND)
        body = self._body_json()
        if what == "webhook_subscribe":
            subscription_id = sim.subscribe(name, body["topic"], body["url"], tuple(body.get("include_fields", ())),
                                            body.get("api_version"))
            return json_answer(200, {"id": subscription_id})
        if what == "webhook_unsubscribe":
            return json_answer(200, {"deleted": sim.unsubscribe(name, body["id"])})
        if what == "webhook_compliance_url":
            sim.set_compliance_webhook_url(name, body.get("url"))
            return json_answer(200, {"url": body.get("url")})
        if what == "webhook_idle":
            return json_answer(200, {"idle": sim.wait_webhooks_idle(name, float(body.get("timeout", 30)))})
        if what == "webhook_trigger":
            return json_answer(200, {"event_id": self._trigger(name, body)})
        return json_answer(404, NOT_FOUND)

    def _trigger(self, name: str, body: dict[str, Any]) -> str | None:
        topic = body.get("topic")
        if topic == "app/uninstalled":
            return self.sim.trigger_app_uninstalled(name)
        if topic == "shop/redact":
            return self.sim.trigger_shop_redact(name)
        if topic == "customers/redact":
            return self.sim.trigger_customers_redact(name, int(body["customer_id"]), body.get("orders_to_redact"))
        if topic == "customers/data_request":
            return self.sim.trigger_customers_data_request(name, int(body["customer_id"]),
                                                           body.get("orders_requested"))
        raise ValueError(f"cannot trigger {topic!r}: app/uninstalled, shop/redact, customers/redact or "
                         "customers/data_request")

    def _admin_records(self, method: str, name: str, data_type: str, action: str | None) -> Answer:
        if method == "GET" and action is None:
            return json_answer(200, {data_type: self.sim.records(name, data_type)})
        if method == "GET" and action == "versions":
            versions = self.sim.record_versions(name, data_type)
            return json_answer(200, {"versions": {str(key): value for key, value in versions.items()}})
        if method == "POST" and action in ("update", "create", "delete"):
            body = self._body_json()
            n, seed = int(body.get("n", 1)), int(body.get("seed", 0))
            if action == "create":
                ids = self.sim.create_records(name, data_type, n, seed)
            else:
                mutate = self.sim.update_records if action == "update" else self.sim.delete_records
                ids = mutate(name, data_type, n, seed, body.get("ids"))
            return json_answer(200, {"ids": ids})
        return json_answer(404, NOT_FOUND)


def _param(value: Any) -> str:
    """A JSON token request value as the string a form would carry (`"expiring": 1` and `true` are "1")."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _pick(document: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """Only the requested top-level keys, in the document's order (what `fields=` does)."""
    if not fields:
        return document
    wanted = {name.strip() for name in fields}
    return {key: value for key, value in document.items() if key in wanted}
