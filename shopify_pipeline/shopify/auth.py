"""Access tokens: static ones, and Shopify's expiring offline tokens that are refreshed (issue #14).

Since December 2025 Shopify issues offline access tokens that expire after 60 minutes, with a refresh token
that is replaced on every use; public apps must use them from 2027-01-01. `ExpiringTokens` keeps one shop's
pair current:

- it refreshes `margin_seconds` before the access token expires, and once when Shopify answers 401 to the
  token it holds (an expired or revoked token: if the refreshed one is refused too, the shop must be
  reconnected);
- **single flight across processes**: only the holder of the shop's refresh lock (`RefreshLock`, a
  DynamoDB lease) refreshes; the others wait and read what it stored;
- the new pair is stored (`TokenVault`, Secrets Manager) **before** it is used. A process that dies between
  Shopify's answer and the store loses nothing: Shopify keeps the refresh token it was given valid until its
  replacement is used, so the next refresh with it succeeds;
- a refresh token Shopify rejects (`invalid_grant`: the app was uninstalled, or the token is too old) is a
  permanent `ReconnectError` that says what to do.

No token, refresh token or client secret is ever put in a message, a log line or a repr.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import requests
from urllib3.util.retry import Retry

from shopify_pipeline.errors import TransientError
from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.errors import ShopifyPermanentError, ShopifyTransientError
from shopify_pipeline.shopify.session import DeadlineExceeded, IncompleteBody, ShopSession, TooLarge

log = logging.getLogger(__name__)

TOKEN_PATH = "/admin/oauth/access_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"
MAX_ANSWER_BYTES = 64 * 1024  # a token answer is a few hundred bytes
MAX_LIFETIME_SECONDS = 366 * 86_400  # an expires_in beyond this is not a lifetime Shopify gives


class ReconnectError(ShopifyPermanentError):
    """Shopify no longer accepts this shop's refresh token (or code): the merchant must reconnect the app."""

    reason = "reconnect"


class RefreshBusyError(ShopifyTransientError):
    """Another process held the shop's refresh lock for longer than we wait; the run is retried later."""

    reason = "token_refresh_busy"


@dataclass(frozen=True)
class TokenPair:
    """An access token and the refresh token that replaces it; times are POSIX seconds. Never shown."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str = field(repr=False)
    refresh_expires_at: float | None = None
    issued_at: float | None = None

    def fresh(self, now: float, margin: float) -> bool:
        """Whether it is good for more than `margin` seconds (at most half its life: a token that lives less
        than twice the margin is not refreshed on every request)."""
        if self.issued_at is not None:
            margin = min(margin, (self.expires_at - self.issued_at) / 2)
        return self.expires_at - margin > now

    def to_json(self) -> dict:
        return {"access_token": self.access_token, "expires_at": self.expires_at,
                "refresh_token": self.refresh_token, "refresh_expires_at": self.refresh_expires_at,
                "issued_at": self.issued_at}

    @classmethod
    def from_json(cls, value: object) -> TokenPair:
        """The pair stored by `to_json`; ValueError (naming no value) for anything else."""
        if not isinstance(value, dict):
            raise ValueError("the stored token pair is not a JSON object")
        access, refresh, expires = value.get("access_token"), value.get("refresh_token"), value.get("expires_at")
        if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
            raise ValueError("the stored token pair lacks its access_token or refresh_token")
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise ValueError("the stored token pair's expires_at is not a number")
        later, issued = value.get("refresh_expires_at"), value.get("issued_at")
        return cls(access, float(expires), refresh, float(later) if isinstance(later, int | float) else None,
                   float(issued) if isinstance(issued, int | float) and not isinstance(issued, bool) else None)


@dataclass(frozen=True)
class ClientCredentials:
    """The app's client id and secret (from the app's settings in the Partner Dashboard). Never shown."""

    client_id: str
    client_secret: str = field(repr=False)


class AccessTokens(Protocol):
    """What a ShopifyClient asks for the token to send."""

    def current(self) -> str:
        """The token to send now."""
        ...

    def rejected(self, token: str) -> str | None:
        """Shopify answered 401 to `token`: another token to try once, or None when there is none."""
        ...


class StaticTokens:
    """A token that does not expire (custom and merchant-created apps)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokens(***)"

    def current(self) -> str:
        return self._token

    def rejected(self, token: str) -> str | None:
        return None  # a static token that Shopify refuses is wrong or revoked: reconnect


class TokenVault(Protocol):
    """Where one shop's token pair is kept (Secrets Manager in production)."""

    def load(self) -> TokenPair: ...

    def save(self, pair: TokenPair) -> None: ...


class RefreshLock(Protocol):
    """Who may refresh one shop's tokens now. `acquire` returns a handle, or None when another holds it."""

    def acquire(self) -> object | None: ...

    def held(self, handle: object) -> bool:
        """Whether the lock behind `handle` is still ours."""
        ...

    def release(self, handle: object) -> None: ...


class OAuthClient:
    """Shopify's token endpoint of one shop (`POST /admin/oauth/access_token`): code exchange, refresh, and
    the exchange of a static offline token for an expiring pair. No redirect is followed (the client secret
    goes to the shop only), answers are capped, and nothing secret is put in an error."""

    def __init__(self, base_url: str, credentials: ClientCredentials, settings: ShopifySettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`base_url` is the shop's checked address (`shop_base_url`)."""
        self.settings = (settings or ShopifySettings()).validated()
        self.url = base_url.rstrip("/") + TOKEN_PATH
        self.credentials = credentials
        self._clock = clock
        # One deadline per request (not per socket read), no redirects, no urllib3 retries (ours are explicit),
        # and an answer larger than a token answer can be is not read.
        self._session = ShopSession({"Accept": "application/json", "User-Agent": "shopify_pipeline/0.1"},
                                    Retry(total=0, redirect=False, raise_on_status=False),
                                    self.settings.timeout_seconds, MAX_ANSWER_BYTES)

    def __repr__(self) -> str:
        return f"OAuthClient({urlsplit(self.url).netloc!r})"

    def close(self) -> None:
        self._session.close()

    def refresh(self, refresh_token: str) -> TokenPair:
        return self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def exchange_code(self, code: str) -> TokenPair:
        """The expiring pair for an authorization code from the app's OAuth redirect (single use)."""
        return self._grant({"code": code, "expiring": "1"})

    def exchange_static_token(self, token: str) -> TokenPair:
        """The expiring pair that replaces a public app's non-expiring offline token (Shopify's migration)."""
        return self._grant({"grant_type": TOKEN_EXCHANGE, "subject_token": token,
                            "subject_token_type": OFFLINE_TOKEN_TYPE, "requested_token_type": OFFLINE_TOKEN_TYPE,
                            "expiring": "1"})

    def _grant(self, fields: dict[str, str]) -> TokenPair:
        body = {"client_id": self.credentials.client_id, "client_secret": self.credentials.client_secret, **fields}
        where = urlsplit(self.url).netloc
        answer = failure = None
        try:
            answer = self._session.send("POST", self.url, body)
        except (requests.RequestException, DeadlineExceeded, IncompleteBody, TooLarge) as error:
            # Raised below, outside this block: the request (its body holds the secret) stays out of the
            # exception's context.
            failure = ShopifyTransientError(f"{type(error).__name__} asking {where} for new tokens")
        if failure is not None:
            raise failure
        status, text = answer.status_code, answer.content
        if status >= 500 or status == 429:
            raise ShopifyTransientError(f"{where} answered {status} to the token request", status)
        if 300 <= status < 400:
            raise ShopifyPermanentError(f"{where} answered the token request with a redirect ({status}); refused: "
                                        "the client secret is only sent to the shop itself", status)
        if status >= 400:
            error = _json_field(text, "error")
            if error == "invalid_client":
                raise ShopifyPermanentError(
                    f"{where} refused the app's client id or secret (invalid_client): check the credentials behind "
                    "the connection's client reference (the app's settings in the Partner Dashboard)", status)
            if error in ("invalid_grant", "invalid_request", "missing_subject_token"):
                raise ReconnectError(
                    f"{where} refused to issue tokens ({error}): the refresh token or code is no longer valid, or "
                    "the app was uninstalled. Reconnect the shop: `shopify-pipeline users add … --auth expiring "
                    "--code …` with a new authorization code.", status)
            # Not Shopify's OAuth answer (an edge or proxy page): nothing says the tokens are gone.
            raise ShopifyTransientError(f"{where} answered {status} to the token request "
                                        f"({error or 'not an OAuth error'})", status)
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if value is None:
            raise ShopifyTransientError(f"{where}'s token answer is not JSON", status)
        return self._pair(value, where)

    def _pair(self, value: object, where: str) -> TokenPair:
        if not isinstance(value, dict):
            raise ShopifyTransientError(f"{where}'s token answer is not a JSON object")
        access, refresh, lifetime = value.get("access_token"), value.get("refresh_token"), value.get("expires_in")
        if not (isinstance(access, str) and _token_shaped(access)):
            raise ShopifyTransientError(f"{where}'s token answer has no usable access_token")
        if not (isinstance(refresh, str) and _token_shaped(refresh)):
            raise ReconnectError(f"{where} issued a token that does not expire (no refresh_token): ask for an "
                                 "expiring token (`expiring=1`), or connect the shop with --auth static")
        if (isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or not math.isfinite(lifetime)
                or not 0 < lifetime <= MAX_LIFETIME_SECONDS):
            raise ShopifyTransientError(f"{where}'s token answer has no usable expires_in")
        now = self._clock()
        refresh_life = value.get("refresh_token_expires_in")
        refresh_at = (now + refresh_life if isinstance(refresh_life, int | float) and not isinstance(refresh_life, bool)
                      and math.isfinite(refresh_life) and refresh_life > 0 else None)
        return TokenPair(access, now + float(lifetime), refresh, refresh_at, issued_at=now)


class ExpiringTokens:
    """One shop's expiring tokens, refreshed ahead of expiry and after a 401, one process at a time."""

    def __init__(self, vault: TokenVault, lock: RefreshLock, oauth: OAuthClient, margin_seconds: float = 300.0,
                 wait_seconds: float = 60.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.vault, self.lock, self.oauth = vault, lock, oauth
        self.margin_seconds, self.wait_seconds = margin_seconds, wait_seconds
        self._clock, self._sleep = clock, sleep
        self._pair: TokenPair | None = None
        self.refreshes = 0  # refreshes this process made

    def __repr__(self) -> str:
        return f"ExpiringTokens({self.oauth!r})"

    def current(self) -> str:
        pair = self._pair
        if pair is None or not pair.fresh(self._clock(), self.margin_seconds):
            pair = self._fresh(lambda stored: stored.fresh(self._clock(), self.margin_seconds))
        return pair.access_token

    def rejected(self, token: str) -> str | None:
        """Shopify refused `token` (401): the pair another process stored since, or a new one."""
        pair = self._fresh(lambda stored: stored.access_token != token
                           and stored.fresh(self._clock(), self.margin_seconds))
        return pair.access_token

    def close(self) -> None:
        self.oauth.close()

    def _fresh(self, usable: Callable[[TokenPair], bool]) -> TokenPair:
        """A usable pair: the stored one if it is, else one this process refreshes under the lock, or that the
        lock's holder stored while we waited."""
        deadline = self._clock() + self.wait_seconds
        pause = 0.05
        while True:
            stored = self.vault.load()
            if usable(stored):
                self._pair = stored
                return stored
            handle = self.lock.acquire()
            if handle is not None:
                try:
                    stored = self.vault.load()  # the last holder may have stored a new pair just before
                    if not usable(stored):
                        stored = self._refresh(stored, handle)
                    if stored is not None:
                        self._pair = stored
                        return stored
                finally:
                    self.lock.release(handle)
            if self._clock() >= deadline:
                raise RefreshBusyError(f"another process has been refreshing the tokens of {self.oauth!r} for "
                                       f"{self.wait_seconds:.0f} s; the run is tried again later")
            self._sleep(pause)
            pause = min(0.5, pause * 2)

    def _refresh(self, stored: TokenPair, handle: object) -> TokenPair | None:
        """A new pair, stored; None when the lock was lost meanwhile (the new pair is dropped unused, so the
        refresh token the new holder uses stays valid: Shopify keeps it until its replacement is used)."""
        tries = 3
        for attempt in range(tries):
            try:
                pair = self.oauth.refresh(stored.refresh_token)
                break
            except ReconnectError:
                # Another holder (whose lock had run out) may have refreshed with this token and stored the
                # result: then that pair is the one to use, and nothing is lost.
                latest = self.vault.load()
                if latest.refresh_token != stored.refresh_token:
                    return latest
                raise
            except TransientError:
                # Safe to ask again with the same refresh token: Shopify keeps it valid until its
                # replacement is used, so a lost answer costs nothing.
                if attempt == tries - 1:
                    raise
                self._sleep(min(4.0, 1.0 * 2 ** attempt))
        if not self.lock.held(handle):
            log.warning("lost the token refresh lock of %s while refreshing; the new tokens are dropped unused",
                        self.oauth)
            return None
        self.vault.save(pair)  # stored before it is used: a process that dies now loses nothing
        self.refreshes += 1
        log.info("refreshed the access token of %s (valid %.0f s)", self.oauth, pair.expires_at - self._clock())
        return pair


def _token_shaped(text: str) -> bool:
    return bool(text) and len(text) < 4096 and all(33 <= ord(char) <= 126 for char in text)


def _json_field(body: bytes, name: str) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    found = value.get(name) if isinstance(value, dict) else None
    return found if isinstance(found, str) and found.isascii() and found.replace("_", "").isalnum() else None
