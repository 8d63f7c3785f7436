"""Every setting in one place: defaults, and the environment variable that overrides each.

Nothing here talks to AWS or Shopify; the other layers receive a `Settings` and read what they need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from shopify_pipeline.errors import PermanentError

DATA_TYPES = ("orders", "products", "customers")
SYNC_TYPES = ("initial", "manual", "daily")
# `auto`: resume the unfinished sync of a data type if there is one, else daily if it was synced, else initial.
AUTO = "auto"
SYNC_TYPE_CHOICES = (AUTO, *SYNC_TYPES)

CHECKPOINT_TTL_SECONDS = 7 * 24 * 3600
STAGED_PAGE_TTL_SECONDS = 7 * 24 * 3600


class SettingsError(PermanentError, ValueError):
    """A setting has a value we cannot use; the message names the variable and the fix."""


def _number(env: Mapping[str, str], var: str, default: float) -> float:
    if not env.get(var):
        return default
    try:
        value = float(env[var])
    except ValueError:
        raise SettingsError(f"{var}={env[var]!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{var}={env[var]!r} is not a finite number")
    return value


@dataclass(frozen=True)
class TableNames:
    """Names of the DynamoDB tables. `SYNC_CHECKPOINTS_TABLE` is the seed's variable name."""

    checkpoints: str = "sync_checkpoints"
    orders: str = "shopify_orders"
    products: str = "shopify_products"
    customers: str = "shopify_customers"
    pages: str = "sync_pages"
    connections: str = "shopify_connections"
    documents: str = "shopify_document_chunks"
    webhook_events: str = "shopify_webhook_events"  # webhook deliveries applied (by event id), with a TTL
    webhook_inbox: str = "shopify_webhook_inbox"  # webhook events accepted and not applied yet (webhooks/inbox.py)

    def records(self, data_type: str) -> str:
        """The record table of one data type (orders, products, customers)."""
        if data_type not in DATA_TYPES:
            raise SettingsError(f"unknown data type {data_type!r}; expected one of {', '.join(DATA_TYPES)}")
        return getattr(self, data_type)

    def all(self) -> list[str]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


# (field of TableNames, environment variable that names that table)
_TABLE_ENV = (
    ("checkpoints", "SYNC_CHECKPOINTS_TABLE"),
    ("orders", "SHOPIFY_ORDERS_TABLE"),
    ("products", "SHOPIFY_PRODUCTS_TABLE"),
    ("customers", "SHOPIFY_CUSTOMERS_TABLE"),
    ("pages", "SYNC_PAGES_TABLE"),
    ("connections", "SHOPIFY_CONNECTIONS_TABLE"),
    ("documents", "SHOPIFY_DOCUMENT_CHUNKS_TABLE"),
    ("webhook_events", "SHOPIFY_WEBHOOK_EVENTS_TABLE"),
    ("webhook_inbox", "SHOPIFY_WEBHOOK_INBOX_TABLE"),
)


@dataclass(frozen=True)
class Settings:
    """Where DynamoDB is and what the tables are called.

    `dynamodb_endpoint_url` empty means real AWS (boto3's usual credential and region chain);
    set it (or `AWS_ENDPOINT_URL_DYNAMODB`) to talk to DynamoDB Local.
    """

    tables: TableNames = field(default_factory=TableNames)
    dynamodb_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    # DynamoDB's per-item limit is 400 KB; we keep a margin for attribute names and key attributes.
    max_item_bytes: int = 380_000
    batch_size: int = 25
    # How many times the batch writer resubmits UnprocessedItems before it reports a failed batch.
    unprocessed_retries: int = 5
    unprocessed_backoff_seconds: float = 0.05
    unprocessed_backoff_cap_seconds: float = 2.0
    # One sync per (user, data type): the lease lasts this long and a heartbeat renews it every third of it,
    # so a crashed sync blocks the next one for at most this long (at once if it died on this host).
    lease_seconds: float = 60.0
    # "compressed": the document as zlib JSON (about 3x fewer write units, faster); "native": a DynamoDB
    # map, readable in the console. Both are lossless; oversized documents are compressed either way.
    document_format: str = "compressed"
    write_workers: int = 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from environment variables (see docs/configuration.md)."""
        env = os.environ if environ is None else environ
        prefix = env.get("SHOPIFY_PIPELINE_TABLE_PREFIX", "")
        names = {
            attr: env.get(var) or prefix + getattr(TableNames, attr) for attr, var in _TABLE_ENV
        }
        document_format = env.get("SHOPIFY_DOCUMENT_FORMAT") or "compressed"
        if document_format not in ("compressed", "native"):
            raise SettingsError(
                f"SHOPIFY_DOCUMENT_FORMAT={document_format!r} is unknown: use compressed (default) or native"
            )
        lease_seconds = _number(env, "SYNC_LEASE_SECONDS", 60.0)
        if not 3 <= lease_seconds <= 3600:
            raise SettingsError(f"SYNC_LEASE_SECONDS={lease_seconds} is out of range: use 3 to 3600 (default 60)")
        return cls(
            tables=TableNames(**names),
            dynamodb_endpoint_url=env.get("AWS_ENDPOINT_URL_DYNAMODB") or None,
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            document_format=document_format,
            lease_seconds=lease_seconds,
        )

    def with_prefix(self, prefix: str) -> Settings:
        """The same settings with every default table name prefixed (tests use one prefix each)."""
        names = {attr: prefix + getattr(TableNames, attr) for attr, _ in _TABLE_ENV}
        return replace(self, tables=TableNames(**names))


@dataclass(frozen=True)
class ShopifySettings:
    """How we talk to Shopify. Defaults follow the seed: 3 retries, 1 → 2 → 4 s backoff capped at 60 s,
    30 s timeouts, 250 records a page."""

    api_version: str = "2026-10"
    page_size: int = 250
    min_page_size: int = 25  # 500/504 on a big page: halve the limit down to this
    # A deadline for a whole request attempt (connect, headers and every read of the body), not per read.
    timeout_seconds: float = 30.0
    # A 250-order page is 1-4 MB; an answer larger than this fails its page before it is read into memory.
    max_response_bytes: int = 64 * 1024 * 1024
    # Retry-After above this (or one that is not a number of seconds or a date) is not slept as given.
    retry_after_cap_seconds: float = 60.0
    retries: int = 3
    backoff_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    # Proactive pacing keeps a few requests of the bucket free; the leak rate starts here, is raised to
    # the plan's (bucket / 20) at the first call-limit header, and is then learned from the readings.
    bucket_margin: int = 2
    leak_per_second: float = 2.0
    # The seed's fixed gaps between pages ("fixed" pacing), off by default ("adaptive").
    pacing: str = "adaptive"
    fixed_gap_seconds: float = 120.0
    fixed_gap_daily_seconds: float = 30.0
    # 429s are waited out (Retry-After) this many times per request before the page counts as failed.
    max_throttle_waits: int = 20
    # Local simulator URLs (http://127.0.0.1:…) are refused unless this is on.
    allow_local_shops: bool = False
    # Expiring access tokens are refreshed this long before they expire (Shopify's last 60 minutes).
    token_refresh_margin_seconds: float = 300.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ShopifySettings:
        """Read overrides from SHOPIFY_API_VERSION, SHOPIFY_PAGE_SIZE, SHOPIFY_TIMEOUT_SECONDS,
        SHOPIFY_PACING and SHOPIFY_ALLOW_LOCAL_SHOPS (see docs/configuration.md)."""
        env = os.environ if environ is None else environ
        values: dict = {}
        if env.get("SHOPIFY_API_VERSION"):
            values["api_version"] = env["SHOPIFY_API_VERSION"]
        for name, var, kind in (
            ("page_size", "SHOPIFY_PAGE_SIZE", int),
            ("timeout_seconds", "SHOPIFY_TIMEOUT_SECONDS", float),
            ("max_response_bytes", "SHOPIFY_MAX_RESPONSE_BYTES", int),
            ("token_refresh_margin_seconds", "SHOPIFY_TOKEN_REFRESH_MARGIN_SECONDS", float),
        ):
            if env.get(var):
                try:
                    values[name] = kind(env[var])
                except ValueError:
                    raise SettingsError(f"{var}={env[var]!r} is not a number") from None
        if env.get("SHOPIFY_PACING"):
            values["pacing"] = env["SHOPIFY_PACING"]
        if env.get("SHOPIFY_ALLOW_LOCAL_SHOPS"):
            values["allow_local_shops"] = env["SHOPIFY_ALLOW_LOCAL_SHOPS"].lower() in ("1", "true", "yes")
        return cls(**values).validated()

    def validated(self) -> ShopifySettings:
        """Self, or SettingsError naming what is wrong."""
        if not 1 <= self.page_size <= 250:
            raise SettingsError(f"page size {self.page_size} is out of range: Shopify allows 1 to 250")
        if self.pacing not in ("adaptive", "fixed"):
            raise SettingsError(f"pacing {self.pacing!r} is unknown: use 'adaptive' (default) or 'fixed'")
        if not (math.isfinite(self.token_refresh_margin_seconds) and 0 <= self.token_refresh_margin_seconds <= 1800):
            raise SettingsError("the token refresh margin (SHOPIFY_TOKEN_REFRESH_MARGIN_SECONDS) must be between 0 "
                                "and 1800 seconds (Shopify's tokens last 3600)")
        if not 0 < self.timeout_seconds <= 600:
            raise SettingsError("the Shopify timeout (SHOPIFY_TIMEOUT_SECONDS) must be between 0 and 600 seconds")
        if self.max_response_bytes < 1024 * 1024:
            raise SettingsError("SHOPIFY_MAX_RESPONSE_BYTES must be at least 1 MiB (a 250-order page is 1-4 MB)")
        return self
