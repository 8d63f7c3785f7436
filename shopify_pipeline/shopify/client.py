"""A Shopify Admin REST client: one session per shop, retries, pacing, cursor paging, typed errors.

Retries of connection errors, timeouts, 430 and 5xx are urllib3's `Retry` (1 → 2 → 4 s with jitter,
capped); 429 is flow control, not an error: the shared pacer waits out `Retry-After` (a decimal, capped).
A page that still fails with 500/504 is asked for again with half the `limit`. The access token lives in
the session headers only: it is never part of a URL, a message, or a repr, and it never leaves the shop:
redirects are refused, next links must stay on the shop's origin (see session.py for the deadline and
the size cap).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from ipaddress import ip_address
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from urllib3.util.retry import Retry

from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.auth import AccessTokens, StaticTokens
from shopify_pipeline.shopify.errors import (
    BadRequestError,
    InvalidCursorError,
    InvalidTokenError,
    MissingScopeError,
    RedirectRefusedError,
    ResponseTooLargeError,
    ShopFrozenError,
    ShopifyPermanentError,
    ShopifyTransientError,
    ShopLockedError,
    ShopNotFoundError,
    UnsafeUrlError,
)
from shopify_pipeline.shopify.pacer import PACERS, FixedGapPacer, Pacer
from shopify_pipeline.shopify.session import Answer, DeadlineExceeded, IncompleteBody, ShopSession, TooLarge

log = logging.getLogger(__name__)

RESOURCES = ("orders", "products", "customers", "events")
EVENT_SUBJECTS = {"orders": "Order", "products": "Product", "customers": "Customer"}
_SHOP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_LINK = re.compile(r'<([^>]+)>;\s*rel="?([a-z]+)"?')


class ShopifyRetry(Retry):
    """urllib3's Retry with Shopify's decimal `Retry-After` ("2.0") and a 1 → 2 → 4 s schedule.

    429 is left to the client's throttle loop (it must not use up the error retries).
    """

    RETRY_AFTER_STATUS_CODES = frozenset({503})

    def parse_retry_after(self, retry_after: str) -> float:
        return retry_after_seconds(retry_after, default=self.backoff_factor, cap=self.retry_after_max)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # noqa: ANN001, ANN201 - urllib3's signature
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        why = f"Shopify answered {response.status}" if response is not None else type(error).__name__
        wait = retry.get_backoff_time()
        if response is not None and response.status in self.RETRY_AFTER_STATUS_CODES:
            wait = max(wait, retry.get_retry_after(response) or 0.0)
        done = len(retry.history)  # `total` counts down: what is left after this retry
        log.warning("%s for %s; retry %d of %d in %.1f s", why, urlsplit(url or "").path, done,
                    done + retry.total if isinstance(retry.total, int) else done, wait)
        return retry

    def get_backoff_time(self) -> float:
        failures = len(self.history)
        if failures == 0:
            return 0.0
        delay = min(self.backoff_max, self.backoff_factor * 2 ** (failures - 1))
        return delay + random.uniform(0, self.backoff_jitter)


class UnexpectedAnswerError(ShopifyTransientError):
    """Valid JSON of the wrong shape (a count that is not a number, scopes without handles)."""


class IncompleteAnswerError(ShopifyTransientError):
    """The headers came but the body did not, whole and in time (urllib3 retries only the earlier phases)."""


def retry_policy(settings: ShopifySettings) -> ShopifyRetry:
    return ShopifyRetry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff_seconds,
        backoff_max=settings.backoff_cap_seconds,
        backoff_jitter=settings.backoff_seconds * 0.25,
        status_forcelist=(430, 500, 502, 503, 504),
        # POST is GraphQL: the sync sends only queries, which are reads and safe to send again.
        allowed_methods=frozenset({"GET", "POST"}),
        raise_on_status=False,
        respect_retry_after_header=True,
        retry_after_max=settings.retry_after_cap_seconds,
    )


def retry_after_seconds(value: str | None, default: float = 2.0, cap: float = 60.0) -> float:
    """How long to wait for a `Retry-After` header: seconds ("2.0") or an HTTP date, at most `cap`.

    A value that is no usable number or date (`inf`, `nan`, negative, garbage) means `default`, logged
    with the reason: a broken header must never become a sleep of hours or an OverflowError."""
    if value is None or not value.strip():
        return default
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            log.warning("ignoring Retry-After %r: neither seconds nor an HTTP date; waiting %.1f s", text[:40], default)
            return default
        if moment.tzinfo is None:
            return default
        seconds = moment.timestamp() - time.time()
    if not math.isfinite(seconds) or seconds < 0:
        log.warning("ignoring Retry-After %r: not a finite, non-negative wait; waiting %.1f s", text[:40], default)
        return default
    if seconds > cap:
        log.warning("Retry-After %r is longer than the %.0f s cap: waiting %.0f s", text[:40], cap, cap)
    return min(seconds, cap)


def shop_base_url(shop: str, allow_local: bool = False) -> str:
    """The base URL of a shop, from `acme`, `acme.myshopify.com`, `https://acme.myshopify.com`, or
    (only with allow_local) a loopback simulator URL. Raises UnsafeUrlError for anything else."""
    value = shop.strip().rstrip("/")
    if value.startswith(("http://", "https://")):
        parts = urlsplit(value)
        host = parts.hostname or ""
        if _is_loopback(host):
            if not allow_local:
                raise UnsafeUrlError(
                    f"{value} is a local URL; local simulator shops need allow_local_shops "
                    "(SHOPIFY_ALLOW_LOCAL_SHOPS=1)"
                )
            return value
        if parts.scheme != "https" or parts.path not in ("", "/"):
            raise UnsafeUrlError(f"{value} is not a shop address: use https://{{shop}}.myshopify.com")
        value = host
    name = value.removesuffix(".myshopify.com")
    if not _SHOP_NAME.match(name):
        raise UnsafeUrlError(
            f"{shop!r} is not a Shopify shop domain: expected {{shop}}.myshopify.com with letters, digits and "
            "dashes"
        )
    return f"https://{name}.myshopify.com"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Page:
    """One answered page: the records, the exact bytes Shopify sent, and where the next page is."""

    records: list[dict]
    body: bytes
    url: str
    next_url: str | None
    limit: int


@dataclass
class ClientStats:
    """What the client did, for metadata and benchmarks (thread-safe increments)."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttle_wait_seconds: float = 0.0
    pace_wait_seconds: float = 0.0
    page_shrinks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)


class ShopifyClient:
    """Talks to one shop's Admin REST API."""

    def __init__(
        self,
        shop: str,
        token: str | AccessTokens,
        settings: ShopifySettings | None = None,
        pacer: Pacer | FixedGapPacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = (settings or ShopifySettings()).validated()
        self.base_url = shop_base_url(shop, self.settings.allow_local_shops)
        self._origin = urlsplit(self.base_url)
        self.pacer = pacer or PACERS.for_shop(self.base_url, self.settings.leak_per_second,
                                              self.settings.bucket_margin)
        self.stats = ClientStats()
        self.answered_version: str | None = None  # X-Shopify-API-Version of the last answer
        self._sleep = sleep
        # A static token, or expiring ones refreshed as they run out (shopify/auth.py): asked for per request.
        self.tokens: AccessTokens = StaticTokens(token) if isinstance(token, str) else token
        self._session = ShopSession(
            {"Accept": "application/json", "User-Agent": "shopify_pipeline/0.1"},
            retry_policy(self.settings), self.settings.timeout_seconds, self.settings.max_response_bytes)

    def __repr__(self) -> str:
        return f"ShopifyClient({self.base_url!r})"

    def close(self) -> None:
        self._session.close()
        close_tokens = getattr(self.tokens, "close", None)  # expiring tokens hold the OAuth endpoint's session
        if close_tokens is not None:
            close_tokens()

    # URLs ----------------------------------------------------------------------------------------

    def api_url(self, path: str, params: dict | None = None) -> str:
        """`{base}/admin/api/{version}/{path}` with `params` as the query."""
        url = f"{self.base_url}/admin/api/{self.settings.api_version}/{path}"
        return f"{url}?{urlencode(params)}" if params else url

    def first_page_url(self, resource: str, params: dict | None = None) -> str:
        """The first page of a listing; orders get `status=any` unless asked otherwise."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; expected one of {', '.join(RESOURCES)}")
        query = {"limit": self.settings.page_size, **(params or {})}
        if resource == "orders":
            query.setdefault("status", "any")  # Shopify's default (open) silently hides closed orders
        return self.api_url(f"{resource}.json", query)

    def _check_same_shop(self, url: str) -> None:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (self._origin.scheme, self._origin.netloc) or not parts.path.startswith(
            self._origin.path
        ):
            raise UnsafeUrlError(
                f"refusing to follow a link to {parts.scheme}://{parts.netloc}{parts.path}: it is not this "
                f"shop ({self.base_url}). The token is only ever sent to the shop itself."
            )

    # Requests ------------------------------------------------------------------------------------

    def get(self, url: str) -> Answer:
        """GET `url` of this shop: paced, retried, 429s waited out. Returns a 2xx answer or raises."""
        return self.request("GET", url)

    def request(self, method: str, url: str, json_body: dict | None = None, paced: bool = True) -> Answer:
        """`method` `url` of this shop: retried, 429s waited out, paced by the REST bucket unless `paced` is
        False (GraphQL has its own, by cost). Returns a 2xx answer or raises a typed error."""
        self._check_same_shop(url)
        token = self.tokens.current()
        retried_token = False
        for _ in range(self.settings.max_throttle_waits + 1):
            if paced:
                waited = self.pacer.acquire()
                self.stats.add(pace_wait_seconds=waited)
                if waited >= 1:
                    log.info("pacing: waited %.1f s for room in %s's rate-limit bucket", waited, self.base_url)
            try:
                response = self._session.send(method, url, json_body, {"X-Shopify-Access-Token": token})
            except DeadlineExceeded as error:
                self.stats.add(requests=1)
                kind = IncompleteAnswerError if error.in_body else ShopifyTransientError
                raise kind(
                    f"{self._where(url)} did not answer completely within the {self.settings.timeout_seconds:g} s "
                    "request deadline (a slow or trickling server)") from None
            except IncompleteBody as error:
                self.stats.add(requests=1)
                raise IncompleteAnswerError(f"{error} while reading the answer of {self._where(url)}") from None
            except TooLarge as error:
                self.stats.add(requests=1)
                raise ResponseTooLargeError(
                    f"the answer for {self._where(url)} is larger than the {self.settings.max_response_bytes:,} byte "
                    f"cap ({'declared ' if error.declared else 'more than '}{error.size:,} bytes); it was not read "
                    "into memory. A 250-record page is 1-4 MB: check the shop, or raise SHOPIFY_MAX_RESPONSE_BYTES."
                ) from None
            except requests.RequestException as error:
                self.stats.add(requests=1)
                raise ShopifyTransientError(
                    f"{type(error).__name__} talking to {self._where(url)} after {self.settings.retries} retries"
                ) from None  # the chained exception would carry the request and its headers
            self.stats.add(requests=1 + response.retries, retries=response.retries)
            if paced:
                self.pacer.observe(response.headers.get("X-Shopify-Shop-Api-Call-Limit"))
            if response.status_code == 401 and not retried_token:
                # An expiring token that ran out (or was replaced by another process): once, with the next.
                retried_token = True
                replacement = self.tokens.rejected(token)
                if replacement is not None and replacement != token:
                    log.info("Shopify refused the access token of %s (401); trying once with a refreshed one",
                             self.base_url)
                    token = replacement
                    continue
            if response.status_code != 429:
                return self._checked(response, url)
            wait = retry_after_seconds(response.headers.get("Retry-After"), default=2.0,
                                       cap=self.settings.retry_after_cap_seconds)
            log.info("rate limited by Shopify (429) on %s: waiting %.1f s", self._where(url), wait)
            if paced:
                self.pacer.throttled(wait)
            self.stats.add(throttled=1, throttle_wait_seconds=wait)
            self._sleep(wait)
        raise ShopifyTransientError(
            f"{self._where(url)} kept answering 429 after {self.settings.max_throttle_waits} waits", 429
        )

    def _where(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.netloc}{parts.path}"

    @property
    def fell_forward(self) -> bool:
        """Whether Shopify answered with another API version than the one asked for (a retired version falls
        forward silently to the oldest supported one)."""
        return self.answered_version is not None and self.answered_version != self.settings.api_version

    def _note_version(self, version: str | None) -> None:
        if not version or version == "unstable":
            return
        asked = self.settings.api_version
        if version != asked and version != self.answered_version:
            log.warning("Shopify answered %s with API version %s, not %s: %s is no longer supported and fell "
                        "forward. Set SHOPIFY_API_VERSION to a supported version.", self.base_url, version, asked,
                        asked)
        self.answered_version = version

    def _checked(self, response: Answer, url: str) -> Answer:
        status = response.status_code
        self._note_version(response.headers.get("X-Shopify-API-Version"))
        if status < 300:
            return response
        body = response.text[:300]
        where = self._where(url)
        if status < 400:
            location = urlsplit(response.headers.get("Location", ""))
            target = f"{location.scheme}://{location.netloc}" if location.netloc else "a path of the same host"
            raise RedirectRefusedError(
                f"{where} answered {status}, a redirect to {target}. Shopify's Admin API does not redirect, and "
                "following one would send the access token elsewhere, so it is refused. Check the shop domain "
                f"({self.base_url}): a shop's permanent address is its {{shop}}.myshopify.com domain.", status)
        if status == 400:
            if "page_info" in body and "Invalid value" in body:
                raise InvalidCursorError(
                    f"Shopify refused the page cursor at {where} ({body}); the slice restarts from its last "
                    "durable position", status)
            raise BadRequestError(f"Shopify refused the request {where}: {body}", status)
        if status == 401:
            raise InvalidTokenError(
                f"Shopify rejected the access token for {self.base_url} (401). The token is wrong or was "
                "revoked: reconnect the shop (update the user's connection with a new token).", status)
        if status == 402:
            raise ShopFrozenError(
                f"{self.base_url} is frozen (402 Unavailable Shop): the merchant must settle their Shopify "
                "bill; syncs resume once the shop is active.", status)
        if status == 403:
            scope = _scope_in(body) or "the needed"
            raise MissingScopeError(
                f"the app lacks the {scope} scope for {where} (403). Ask the merchant to approve {scope} "
                "and reconnect.", status)
        if status == 404:
            raise ShopNotFoundError(
                f"{where} was not found (404): check the shop domain ({self.base_url}) and the API version "
                f"{self.settings.api_version}.", status)
        if status == 423:
            raise ShopLockedError(
                f"{self.base_url} is locked (423); Shopify support must unlock it before syncs can run.", status)
        if status >= 500 or status == 430:
            raise ShopifyTransientError(f"Shopify answered {status} for {where} after retries", status)
        raise ShopifyPermanentError(f"Shopify answered {status} for {where}: {body}", status)

    def get_json(self, url: str) -> tuple[dict, Answer]:
        """GET and parse JSON (exact ints, Decimal fractions); malformed or incomplete bodies are retried."""
        return self.request_json("GET", url)

    def request_json(self, method: str, url: str, json_body: dict | None = None,
                     paced: bool = True) -> tuple[dict, Answer]:
        """`request` and parse a JSON object (exact ints, Decimal fractions); malformed or incomplete bodies
        are retried with backoff."""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self.stats.add(retries=1)
                self._sleep(self._backoff(attempt))
            try:
                response = self.request(method, url, json_body, paced)
            except IncompleteAnswerError as error:
                if attempt == self.settings.retries:
                    raise
                log.warning("%s; retry %d of %d", error, attempt + 1, self.settings.retries)
                continue
            try:
                document = parse_json(response.content)
            except ValueError:
                if attempt == self.settings.retries:
                    raise ShopifyTransientError(
                        f"Shopify sent a malformed JSON body for {self._where(url)} "
                        f"{self.settings.retries + 1} times") from None
                log.warning("Shopify sent a malformed JSON body for %s; retry %d of %d", self._where(url),
                            attempt + 1, self.settings.retries)
                continue
            if isinstance(document, dict):
                return document, response
        raise ShopifyTransientError(f"unexpected JSON for {self._where(url)}")

    def wait_before_retry(self, attempt: int) -> None:
        """Sleep the backoff before retry number `attempt` (1 → 2 → 4 s with jitter, capped)."""
        self._sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        base = min(self.settings.backoff_cap_seconds, self.settings.backoff_seconds * 2 ** (attempt - 1))
        return base + random.uniform(0, self.settings.backoff_seconds * 0.25)

    # Paging --------------------------------------------------------------------------------------

    def fetch_page(self, resource: str, url: str) -> Page:
        """One page of `resource` at `url` (a first-page URL or a next link, followed verbatim).

        On 500/504 that survive the retries, asks again with half the limit, down to min_page_size.
        """
        while True:
            try:
                document, response = self.get_json(url)
            except ShopifyTransientError as error:
                limit = _limit_of(url, self.settings.page_size)
                if error.status in (500, 504) and limit > self.settings.min_page_size:
                    url = _with_limit(url, max(self.settings.min_page_size, limit // 2))
                    self.stats.add(page_shrinks=1)
                    continue
                raise
            if resource not in document or not isinstance(document[resource], list):
                raise ShopifyTransientError(f"the answer for {self._where(url)} has no {resource!r} list")
            next_url = _next_link(response.headers.get("Link"))
            if next_url:
                self._check_same_shop(next_url)
            return Page(document[resource], response.content, url, next_url, _limit_of(url, self.settings.page_size))

    def pages(self, resource: str, params: dict | None = None) -> Iterator[Page]:
        """Every page of a listing, following the Link header until there is no next page."""
        url: str | None = self.first_page_url(resource, params)
        while url:
            page = self.fetch_page(resource, url)
            yield page
            url = page.next_url

    def count(self, resource: str, params: dict | None = None) -> int:
        """Shopify's own count of a listing (`{resource}/count.json`; orders with status=any)."""
        query = dict(params or {})
        if resource == "orders":
            query.setdefault("status", "any")
        document, _ = self.get_json(self.api_url(f"{resource}/count.json", query))
        count = document.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UnexpectedAnswerError(f"Shopify's {resource} count is not a number: {str(count)[:40]!r}")
        return count

    def deletion_events_url(self, resource: str, since: str) -> str:
        """The first page of `destroy` events of `resource` records since `since` (deleted records never
        appear in their own listing)."""
        return self.first_page_url(
            "events", {"filter": EVENT_SUBJECTS[resource], "verb": "destroy", "created_at_min": since})

    def granted_scopes(self) -> set[str]:
        """The scopes granted to our token (`/admin/oauth/access_scopes.json`)."""
        document, _ = self.get_json(f"{self.base_url}/admin/oauth/access_scopes.json")
        scopes = document.get("access_scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, dict) and isinstance(s.get("handle"), str)
                                                   for s in scopes):
            raise UnexpectedAnswerError("Shopify's access scopes are not a list of {handle: ...} objects")
        return {scope["handle"] for scope in scopes}


def _scope_in(body: str) -> str | None:
    match = re.search(r"\b(read_[a-z_]+|write_[a-z_]+)\b", body)
    return match.group(1) if match else None


def _next_link(header: str | None) -> str | None:
    for url, rel in _LINK.findall(header or ""):
        if rel == "next":
            return url
    return None


def _limit_of(url: str, default: int) -> int:
    for key, value in parse_qsl(urlsplit(url).query):
        if key == "limit" and value.isdigit():
            return int(value)
    return default


def _with_limit(url: str, limit: int) -> str:
    """The same URL with another `limit` (the one parameter Shopify allows beside page_info)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "limit"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("limit", str(limit))])))
