"""Configuration of simulated shops and their faults: plain dataclasses, JSON-friendly both ways."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

DATA_TYPES = ("orders", "products", "customers")

ALL_SCOPES = ("read_orders", "read_all_orders", "read_products", "read_customers")

# (bucket size, leak per second) as Shopify documents (standard, plus) or was observed (advanced).
PLANS: dict[str, tuple[int, float]] = {
    "standard": (40, 2.0),
    "advanced": (80, 4.0),
    "plus": (400, 20.0),
    # Commerce Components: twice Plus (an assumption; Shopify negotiates these limits per contract).
    "enterprise": (800, 40.0),
    # No rate limit at all: for measuring how fast the simulator itself serves.
    "unlimited": (40, 0.0),
}

# GraphQL cost points restored per second, as Shopify documents per plan; the bucket holds
# GRAPHQL_BUCKET_SECONDS of restore. "unlimited" is effectively no limit, for measuring the simulator.
GRAPHQL_RESTORE_RATES: dict[str, float] = {
    "standard": 100.0,
    "advanced": 200.0,
    "plus": 1000.0,
    "enterprise": 2000.0,
    "unlimited": 1_000_000.0,
}

SHOP_STATES = ("active", "frozen", "locked")

# The versions Shopify supports at the end of 2026; an older one falls forward to the oldest of these.
SUPPORTED_API_VERSIONS = ("2026-01", "2026-04", "2026-07", "2026-10")

FAULT_KINDS = ("500", "502", "503", "504", "430", "429", "404", "hang", "reset", "truncate", "malformed",
               # GraphQL only: a THROTTLED answer whatever the bucket holds, and partial data with an error.
               "throttled", "partial")



def _known_fields(cls: type, data: dict[str, Any], what: str, tuples: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` as `cls`'s keyword arguments (JSON lists made tuples where named); ValueError for unknown keys."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} fields: {', '.join(sorted(unknown))}")
    return {key: tuple(value) if key in tuples else value for key, value in data.items()}

@dataclass(frozen=True)
class FaultRule:
    """A deterministic fault: of the requests that match, let `skip` pass, fail the next `times`, then stop.

    `endpoint` matches the endpoint name as counted in stats ("orders", "orders/count", "products", …;
    "graphql" for every GraphQL request, "graphql:orders" for one asking for the root field `orders`;
    None matches all); `page` matches the page number of a listing (1 is the request without
    page_info or `after`; None matches any request). `times` <= 0 means forever. `every=n` (> 0) spaces the
    failures out: of the matching requests after `skip`, the n-th, 2n-th, … fail (`times` of them), the
    others pass; FaultRule("503", every=3, times=0) is "a 503 every third request".
    """

    kind: str
    endpoint: str | None = None
    page: int | None = None
    skip: int = 0
    times: int = 1
    every: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if self.every < 0:
            raise ValueError("every counts requests: 0 (consecutive failures) or more")


@dataclass(frozen=True)
class FaultConfig:
    """Faults a shop serves. Rates are probabilities per request, drawn from a generator seeded by `seed`.

    `error_500_rate` is the chance at limit=250 and shrinks in proportion to smaller limits (big pages
    fail more often, as on Shopify). Durations are real seconds (not scaled by time_scale).
    """

    seed: int = 0
    error_500_rate: float = 0.0
    error_502_rate: float = 0.0
    error_503_rate: float = 0.0
    error_504_rate: float = 0.0
    error_430_rate: float = 0.0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    malformed_rate: float = 0.0
    latency_seconds: float = 0.0
    hang_seconds: float = 30.0
    gateway_timeout_seconds: float = 10.0
    call_limit_header_on_429: bool = True
    rules: tuple[FaultRule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """This configuration as JSON-ready data (rules as a list of dicts)."""
        data = asdict(self)
        data["rules"] = [asdict(rule) for rule in self.rules]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultConfig:
        """A FaultConfig from JSON data; unknown keys raise ValueError so typos are not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        values["rules"] = tuple(FaultRule(**rule) for rule in values.get("rules", ()))
        return cls(**values)


BULK_ERROR_CODES = ("ACCESS_DENIED", "INTERNAL_SERVER_ERROR", "TIMEOUT")

# The first API version that runs up to five bulk queries per shop at once and defaults groupObjects to false.
BULK_CONCURRENT_VERSION = "2026-01"


@dataclass(frozen=True)
class BulkFaults:
    """Faults of bulk query operations, applied to operations created while they are set.

    `fail` makes an operation FAILED with that errorCode: ACCESS_DENIED as soon as it runs, the others once
    `fail_at` (a fraction) of its objects are processed, with a `partialDataUrl` holding the lines written so
    far when `partial_data`. `stuck` keeps it RUNNING with objectCount frozen at `fail_at` (until
    BulkConfig.max_duration_seconds). `null_url` completes it with `url: null` although objectCount > 0.
    `drop_download_after_bytes` > 0 makes the first `drop_download_times` downloads of each of its files
    send that many bytes and then reset the connection. `root_field` limits the faults to operations whose
    query starts at that field ("orders"); `times` > 0 to that many operations, then the faults stop.
    """

    fail: str | None = None
    fail_at: float = 0.5
    partial_data: bool = False
    stuck: bool = False
    null_url: bool = False
    drop_download_after_bytes: int = 0
    drop_download_times: int = 1
    root_field: str | None = None
    times: int = 0

    def __post_init__(self) -> None:
        if self.fail is not None and self.fail not in BULK_ERROR_CODES:
            raise ValueError(f"unknown bulk errorCode {self.fail!r}; expected one of {', '.join(BULK_ERROR_CODES)}")
        if not 0.0 <= self.fail_at <= 1.0:
            raise ValueError("fail_at is a fraction between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        """These faults as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkFaults:
        """BulkFaults from JSON data; unknown keys raise ValueError."""
        return cls(**_known_fields(cls, data, "bulk fault"))


@dataclass(frozen=True)
class BulkConfig:
    """How a shop runs bulk query operations. Durations are simulated seconds (divided by time_scale).

    `concurrency` is how many bulk queries may run at once (None: 5 from API 2026-01 on, 1 before, by the
    version that answers the mutation). An operation stays CREATED for `created_seconds`, then processes
    `objects_per_second` objects (every JSONL line counts); a cancel takes `cancel_seconds`. Result URLs
    expire `url_expiry_seconds` after the operation ends (Shopify: 7 days); an operation that has not
    finished after `max_duration_seconds` (Shopify: 10 days) fails with TIMEOUT.
    """

    concurrency: int | None = None
    objects_per_second: float = 5000.0
    created_seconds: float = 1.0
    cancel_seconds: float = 1.0
    url_expiry_seconds: float = 7 * 86_400.0
    max_duration_seconds: float = 10 * 86_400.0
    faults: BulkFaults = field(default_factory=BulkFaults)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkConfig:
        """A BulkConfig from JSON data (faults as a nested object)."""
        values = dict(data)
        if "faults" in values:
            values["faults"] = BulkFaults.from_dict(values["faults"])
        return cls(**values)


# Grants of POST /admin/oauth/access_token, by the names AuthFaults.grant_types uses.
AUTH_GRANT_TYPES = ("authorization_code", "refresh_token", "token_exchange")


@dataclass(frozen=True)
class AuthFaults:
    """Faults of a shop's token endpoint (POST /admin/oauth/access_token), for the grants in `grant_types`.

    The next `server_errors` requests answer `server_error_status` (500 JSON, 502/503/504 HTML as the API's
    faults) and change nothing. The next `lost_responses` successful grants are performed (the new tokens
    are issued and the old ones rotated) and then the connection is reset without an answer. `revoked` is
    the app uninstalled: when it is set every token, refresh token and unused code of the shop is revoked,
    and while it stays set every API request answers 401 and every grant is refused; clearing it is a
    reinstall (new authorization codes work, the revoked credentials stay revoked).
    """

    server_errors: int = 0
    server_error_status: int = 503
    lost_responses: int = 0
    revoked: bool = False
    grant_types: tuple[str, ...] = ("refresh_token",)

    def __post_init__(self) -> None:
        if self.server_error_status not in (500, 502, 503, 504):
            raise ValueError("server_error_status must be 500, 502, 503 or 504")
        if self.server_errors < 0 or self.lost_responses < 0:
            raise ValueError("server_errors and lost_responses count requests: 0 or more")
        unknown = set(self.grant_types) - set(AUTH_GRANT_TYPES)
        if unknown:
            raise ValueError(f"unknown grant types {', '.join(sorted(unknown))}; expected some of "
                             f"{', '.join(AUTH_GRANT_TYPES)}")

    def to_dict(self) -> dict[str, Any]:
        """These faults as JSON-ready data."""
        return {**asdict(self), "grant_types": list(self.grant_types)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuthFaults:
        """AuthFaults from JSON data; unknown keys raise ValueError."""
        return cls(**_known_fields(cls, data, "auth fault", tuples=("grant_types",)))


@dataclass(frozen=True)
class AuthConfig:
    """A shop whose app gets Shopify's expiring offline access tokens. Durations are Shopify seconds (divided
    by time_scale), defaults as Shopify documents them.

    `client_id` and `client_secret` are the app's credentials the token endpoint checks. An access token
    lasts `access_token_seconds` (60 minutes), a refresh token `refresh_token_seconds` (90 days). A used
    refresh token stays valid until the app starts using its replacement, at most
    `previous_refresh_token_seconds` (30 days) from its first use. A lost migration answer can be fetched
    again with the same non-expiring token for `migration_retry_seconds` (7 days). `static_token`: whether
    ShopConfig.token is accepted as a non-expiring token from an earlier install until it is exchanged,
    replaced by an expiring one, or revoked.
    """

    client_id: str
    client_secret: str
    access_token_seconds: float = 3600.0
    refresh_token_seconds: float = 90 * 86_400.0
    previous_refresh_token_seconds: float = 30 * 86_400.0
    migration_retry_seconds: float = 7 * 86_400.0
    static_token: bool = True
    faults: AuthFaults = field(default_factory=AuthFaults)

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        lifetimes = (self.access_token_seconds, self.refresh_token_seconds, self.previous_refresh_token_seconds,
                     self.migration_retry_seconds)
        if min(lifetimes) <= 0:
            raise ValueError("token lifetimes must be positive")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuthConfig:
        """An AuthConfig from JSON data (faults as a nested object)."""
        values = dict(data)
        if "faults" in values:
            values["faults"] = AuthFaults.from_dict(values["faults"])
        return cls(**values)


# Webhook topics a subscription can name (GraphQL enum value → topic as in X-Shopify-Topic); the mandatory
# compliance topics are configured with the app, not through the API (ShopConfig.compliance_webhook_url).
WEBHOOK_TOPICS: dict[str, str] = {
    "APP_UNINSTALLED": "app/uninstalled",
    "BULK_OPERATIONS_FINISH": "bulk_operations/finish",
    "CUSTOMERS_CREATE": "customers/create",
    "CUSTOMERS_DELETE": "customers/delete",
    "CUSTOMERS_UPDATE": "customers/update",
    "ORDERS_CREATE": "orders/create",
    "ORDERS_DELETE": "orders/delete",
    "ORDERS_UPDATED": "orders/updated",
    "PRODUCTS_CREATE": "products/create",
    "PRODUCTS_DELETE": "products/delete",
    "PRODUCTS_UPDATE": "products/update",
}
COMPLIANCE_TOPICS = ("customers/data_request", "customers/redact", "shop/redact")

# Shopify retries a failed delivery 8 times over 4 hours with exponential backoff and publishes no schedule:
# delays doubling from 14400/255 s put the 8th retry exactly 4 hours after the first attempt (simulated seconds).
WEBHOOK_RETRY_DELAYS = tuple(14_400 / 255 * 2 ** n for n in range(8))


@dataclass(frozen=True)
class WebhookFaults:
    """Faults of webhook deliveries, drawn per event from a generator seeded by `seed` and the event's number.

    `lose_rate`: the event is never delivered. `duplicate_rate`: each delivery of the event is sent
    `duplicate_copies` more times (same X-Shopify-Event-Id and X-Shopify-Webhook-Id). `reorder_window` > 0:
    new deliveries are held until that many are waiting (or `reorder_hold_seconds`, real seconds, passed since
    the first) and then sent in shuffled order. `stale_rate`: after a record's newer event is delivered to an
    address, the event delivered there before it for the same record is delivered again (an old payload
    arriving after a newer one, as a late retry does). `bad_signature_rate`: an attempt carries a wrong
    X-Shopify-Hmac-Sha256 (drawn per attempt, so a retry may be signed correctly). `topics`: limit the faults
    to these topics ("orders/updated"; empty: every topic).
    """

    seed: int = 0
    lose_rate: float = 0.0
    duplicate_rate: float = 0.0
    duplicate_copies: int = 1
    reorder_window: int = 0
    reorder_hold_seconds: float = 1.0
    stale_rate: float = 0.0
    bad_signature_rate: float = 0.0
    topics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        rates = (self.lose_rate, self.duplicate_rate, self.stale_rate, self.bad_signature_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("webhook fault rates are probabilities between 0 and 1")
        if self.duplicate_copies < 1 or self.reorder_window < 0 or self.reorder_hold_seconds < 0:
            raise ValueError("duplicate_copies must be 1 or more; reorder_window and reorder_hold_seconds 0 or more")
        known = set(WEBHOOK_TOPICS.values()) | set(COMPLIANCE_TOPICS)
        unknown = set(self.topics) - known
        if unknown:
            raise ValueError(f"unknown webhook topics {', '.join(sorted(unknown))}")

    def to_dict(self) -> dict[str, Any]:
        """These faults as JSON-ready data."""
        return {**asdict(self), "topics": list(self.topics)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookFaults:
        """WebhookFaults from JSON data; unknown keys raise ValueError."""
        return cls(**_known_fields(cls, data, "webhook fault", tuples=("topics",)))


@dataclass(frozen=True)
class WebhookConfig:
    """How a shop delivers webhooks. A delivery fails on a non-2xx answer, a connection error, or no answer
    within `timeout_seconds` (Shopify: 5; `connect_timeout_seconds` 1), real seconds. A failed delivery is
    retried after each of `retry_delays_seconds` (simulated seconds, divided by time_scale; Shopify: 8 retries
    over 4 hours), then dropped; with `remove_failing_subscriptions` the subscription that dropped it is deleted
    too, as Shopify deletes a failing subscription created through the Admin API.
    """

    timeout_seconds: float = 5.0
    connect_timeout_seconds: float = 1.0
    retry_delays_seconds: tuple[float, ...] = WEBHOOK_RETRY_DELAYS
    remove_failing_subscriptions: bool = True
    faults: WebhookFaults = field(default_factory=WebhookFaults)

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("webhook timeouts must be positive")
        if any(delay < 0 for delay in self.retry_delays_seconds):
            raise ValueError("webhook retry delays must not be negative")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookConfig:
        """A WebhookConfig from JSON data (faults as a nested object)."""
        values = dict(data)
        if "faults" in values:
            values["faults"] = WebhookFaults.from_dict(values["faults"])
        if "retry_delays_seconds" in values:
            values["retry_delays_seconds"] = tuple(values["retry_delays_seconds"])
        return cls(**values)


@dataclass(frozen=True)
class ShopConfig:
    """One simulated shop: its name (the `{shop}` of `{shop}.myshopify.com`), token, data and state.

    `large_order_every=n` makes every n-th order a large one (hundreds of line items, several hundred
    KB). `large_product_every=n` likewise gives every n-th product `large_product_variants` variants
    (GraphQL pages through all of them; REST, as Shopify's deprecated products endpoint, serves only the
    first 100). `history_days` spreads created_at over that many days before the simulator starts.
    `timezone_offset_minutes` is the shop's local offset used in every REST timestamp. `rest_bucket_size` and
    `rest_leak_per_second` replace the plan's REST leaky bucket (requests, and requests leaked per Shopify
    second), e.g. 3 and 1.0 for a bucket tighter than any plan's. `api_versions` are
    the supported versions: an older one is answered by the oldest of them, a newer one is 404. `bulk`
    configures bulk query operations (concurrency, speed, URL expiry, faults). `auth` gives the app expiring
    offline access tokens and the token endpoint; None keeps the one static `token`. `webhooks` configures
    webhook deliveries (timeouts, retries, faults); they are signed with the app's client secret:
    `auth.client_secret`, else `webhook_secret` (default "shpss_<name>"). `compliance_webhook_url` is where the
    mandatory compliance topics go (app configuration in Shopify, not an API subscription).
    """

    name: str
    token: str
    orders: int = 0
    products: int = 0
    customers: int = 0
    seed: int = 0
    plan: str = "standard"
    scopes: tuple[str, ...] = ALL_SCOPES
    state: str = "active"
    faults: FaultConfig = field(default_factory=FaultConfig)
    large_order_every: int = 0
    large_order_line_items: int = 300
    large_product_every: int = 0
    large_product_variants: int = 300
    history_days: int = 365
    timezone_offset_minutes: int = -300
    rest_bucket_size: int | None = None
    rest_leak_per_second: float | None = None
    api_versions: tuple[str, ...] = SUPPORTED_API_VERSIONS
    bulk: BulkConfig = field(default_factory=BulkConfig)
    auth: AuthConfig | None = None
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    webhook_secret: str | None = None
    compliance_webhook_url: str | None = None

    def __post_init__(self) -> None:
        if self.auth is not None and self.webhook_secret not in (None, self.auth.client_secret):
            raise ValueError("webhooks are signed with the app's client secret: webhook_secret must equal "
                             "auth.client_secret (or be left out)")
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r}; expected one of {', '.join(PLANS)}")
        if self.state not in SHOP_STATES:
            raise ValueError(f"unknown shop state {self.state!r}; expected one of {', '.join(SHOP_STATES)}")
        if self.rest_bucket_size is not None and self.rest_bucket_size < 1:
            raise ValueError("rest_bucket_size is a number of requests: 1 or more")
        if self.rest_leak_per_second is not None and not self.rest_leak_per_second > 0:
            raise ValueError("rest_leak_per_second must be positive (the \"unlimited\" plan has no limit)")

    @property
    def rest_bucket(self) -> tuple[int, float]:
        """The REST leaky bucket: (size, leak per second), the plan's unless overridden."""
        size, leak = PLANS[self.plan]
        return (self.rest_bucket_size or size,
                leak if self.rest_leak_per_second is None else self.rest_leak_per_second)

    @property
    def app_secret(self) -> str:
        """The client secret webhooks are signed with."""
        if self.auth is not None:
            return self.auth.client_secret
        return self.webhook_secret or f"shpss_{self.name}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShopConfig:
        """A ShopConfig from JSON data (as in the CLI's --config file)."""
        values = dict(data)
        if "faults" in values:
            values["faults"] = FaultConfig.from_dict(values["faults"])
        if "bulk" in values:
            values["bulk"] = BulkConfig.from_dict(values["bulk"])
        if values.get("auth") is not None:
            values["auth"] = AuthConfig.from_dict(values["auth"])
        if "webhooks" in values:
            values["webhooks"] = WebhookConfig.from_dict(values["webhooks"])
        for key in ("scopes", "api_versions"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)
