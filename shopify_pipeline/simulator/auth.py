"""One shop's app credentials as Shopify's token endpoint keeps them: expiring offline access tokens.

POST /admin/oauth/access_token grants an access token from an authorization code, a refresh token, or (token
exchange) the app's non-expiring offline token. Every refresh rotates both tokens; the refresh token just used
stays valid until the app starts using its replacement (Shopify's change of 2026-08), so a lost answer can be
fetched again. Only one expiring token is active per app and shop. Nothing here logs a token.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shopify_pipeline.simulator.config import AuthConfig, AuthFaults

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"
# grant_type as sent → the name AuthFaults.grant_types uses.
GRANT_NAMES = {"authorization_code": "authorization_code", "refresh_token": "refresh_token",
               TOKEN_EXCHANGE: "token_exchange"}

CODE_NOT_FOUND = "The authorization code was not found or was already used"


def oauth_error(status: int, error: str, description: str) -> TokenAnswer:
    """An RFC 6749 error answer: {"error": ..., "error_description": ...}."""
    return TokenAnswer(status, {"error": error, "error_description": description})


@dataclass(frozen=True)
class TokenAnswer:
    """What the token endpoint answers: status and JSON body, or a fault the server applies instead.

    `fault` is "500"…"504" (answer that error; nothing changed) or "lost" (the grant happened; drop the
    connection without an answer).
    """

    status: int
    body: dict[str, Any]
    fault: str | None = None


@dataclass
class _Pair:
    """The active expiring access token and its refresh token; times are time.monotonic() seconds."""

    access_token: str
    refresh_token: str
    access_expires: float
    refresh_expires: float


@dataclass
class _Retained:
    """The refresh token that produced the active pair, valid until the pair is used or `until`."""

    refresh_token: str
    until: float


@dataclass
class _Migration:
    """A non-expiring token exchanged for `pair`: the same exchange gets the same pair until `until`."""

    subject_token: str
    pair: _Pair
    until: float


def _seconds_field(real: float) -> int | float:
    """A remaining lifetime as reported: whole seconds left, to the millisecond below a minute (high time
    scales). The small margin absorbs float noise, so a fresh 3600 s token says 3600, not 3599."""
    if real >= 60:
        return math.floor(real + 0.001)
    millis = round(real, 3)
    return int(millis) if millis == int(millis) else millis


class ShopAuth:
    """The tokens of one shop's app, its token endpoint and its faults; safe to call from several threads."""

    def __init__(self, config: AuthConfig, static_token: str, time_scale: float,
                 scopes: Callable[[], tuple[str, ...]]) -> None:
        self.config = config
        self.time_scale = time_scale
        self._scopes = scopes
        self._lock = threading.Lock()
        self._static: str | None = static_token if config.static_token else None
        self._codes: set[str] = set()
        self._pair: _Pair | None = None
        self._retained: _Retained | None = None
        self._migration: _Migration | None = None
        self._counts: Counter[str] = Counter()
        self.faults = AuthFaults()
        self._errors_left = 0
        self._lost_left = 0
        self.set_faults(config.faults)

    # -- control -----------------------------------------------------------------------------------

    def set_faults(self, faults: AuthFaults) -> None:
        """Serve these faults from the next token request on; setting `revoked` revokes everything now."""
        with self._lock:
            if faults.revoked and not self.faults.revoked:
                self._static = None
                self._codes.clear()
                self._pair = self._retained = self._migration = None
            self.faults = faults
            self._errors_left = faults.server_errors
            self._lost_left = faults.lost_responses

    def authorization_code(self) -> str:
        """A new single-use code, as Shopify's redirect after the merchant approves the app carries it."""
        code = secrets.token_hex(16)
        with self._lock:
            self._codes.add(code)
        return code

    def expire_access_tokens(self) -> int:
        """Make the expiring access token expire now (the non-expiring one cannot). Returns how many did."""
        now = time.monotonic()
        with self._lock:
            if self._pair is None or self._pair.access_expires <= now:
                return 0
            self._pair.access_expires = now
            return 1

    # -- observation -------------------------------------------------------------------------------

    def valid_access_tokens(self) -> list[str]:
        """The access tokens API requests are accepted with right now (non-expiring first)."""
        now = time.monotonic()
        with self._lock:
            if self.faults.revoked:
                return []
            tokens = [self._static] if self._static else []
            if self._pair is not None and now < self._pair.access_expires:
                tokens.append(self._pair.access_token)
            return tokens

    def valid_refresh_tokens(self) -> list[str]:
        """The refresh tokens a refresh is accepted with right now: the newest, then the retained one."""
        now = time.monotonic()
        with self._lock:
            if self.faults.revoked:
                return []
            tokens = []
            if self._pair is not None and now < self._pair.refresh_expires:
                tokens.append(self._pair.refresh_token)
            if self._retained is not None and now < self._retained.until:
                tokens.append(self._retained.refresh_token)
            return tokens

    def stats(self) -> dict[str, int]:
        """Counters: token endpoint requests, refresh requests, successful refreshes, tokens issued, and
        API requests refused because their access token had expired."""
        with self._lock:
            return {key: self._counts[key] for key in ("token_requests", "refresh_requests", "refreshes",
                                                       "tokens_issued", "expired_token_rejections")}

    # -- API requests ------------------------------------------------------------------------------

    def accepts(self, token: str) -> bool:
        """Whether an API request with this access token is authenticated; the first request with a new
        expiring token is the app starting to use it, which retires the refresh token kept for a retry."""
        now = time.monotonic()
        with self._lock:
            if self.faults.revoked or not token:
                return False
            if token == self._static:
                return True
            pair = self._pair
            if pair is None or token != pair.access_token:
                return False
            if now >= pair.access_expires:
                self._counts["expired_token_rejections"] += 1
                return False
            self._retained = None
            return True

    # -- the token endpoint ------------------------------------------------------------------------

    def grant(self, params: dict[str, str]) -> TokenAnswer:
        """Answer POST /admin/oauth/access_token with these parameters (body and query string merged)."""
        now = time.monotonic()
        with self._lock:
            self._counts["token_requests"] += 1
            # Shopify's own libraries send no grant_type with an authorization code.
            grant_type = params.get("grant_type") or ("authorization_code" if "code" in params else "")
            name = GRANT_NAMES.get(grant_type)
            if name == "refresh_token":
                self._counts["refresh_requests"] += 1
            faulty = name in self.faults.grant_types
            if faulty and self._errors_left > 0:
                self._errors_left -= 1
                return TokenAnswer(self.faults.server_error_status, {}, str(self.faults.server_error_status))
            if (params.get("client_id") != self.config.client_id
                    or params.get("client_secret") != self.config.client_secret):
                return oauth_error(401, "invalid_client", "Client authentication failed: unknown client_id or "
                                                          "wrong client_secret.")
            if not grant_type:
                return oauth_error(400, "invalid_request", "Missing parameter: grant_type (or code).")
            if name is None:
                return oauth_error(400, "unsupported_grant_type", f"The grant type {grant_type!r} is not supported.")
            if name == "authorization_code":
                answer = self._code_grant(params, now)
            elif name == "refresh_token":
                answer = self._refresh_grant(params, now)
            else:
                answer = self._exchange_grant(params, now)
            if answer.status == 200 and faulty and self._lost_left > 0:
                self._lost_left -= 1
                return TokenAnswer(answer.status, answer.body, "lost")
            return answer

    def _code_grant(self, params: dict[str, str], now: float) -> TokenAnswer:
        code = params.get("code", "")
        if self.faults.revoked or code not in self._codes:
            return oauth_error(400, "invalid_request", CODE_NOT_FOUND)
        self._codes.discard(code)
        if _expiring(params):
            # A new expiring token replaces the non-expiring one and every earlier expiring one.
            self._static = None
            self._retained = self._migration = None
            self._pair = self._new_pair(now)
            return self._pair_answer(self._pair, now)
        if self._static is None:
            self._static = "shpat_" + secrets.token_hex(16)
            self._counts["tokens_issued"] += 1
        return TokenAnswer(200, {"access_token": self._static, "scope": self._scope()})

    def _refresh_grant(self, params: dict[str, str], now: float) -> TokenAnswer:
        token = params.get("refresh_token", "")
        pair, retained = self._pair, self._retained
        if self.faults.revoked or not token:
            return _invalid_refresh_token()
        if pair is not None and token == pair.refresh_token and now < pair.refresh_expires:
            # The newest refresh token's first use retires its predecessor; it is kept in turn until the
            # app uses the pair it is about to get.
            until = min(now + self._real(self.config.previous_refresh_token_seconds), pair.refresh_expires)
            self._retained = _Retained(token, until)
        elif retained is None or now >= retained.until or token != retained.refresh_token:
            return _invalid_refresh_token()
        # Else: a retry with the retained token after a lost answer; the pair it got is replaced.
        self._pair = self._new_pair(now)
        self._migration = None
        self._counts["refreshes"] += 1
        return self._pair_answer(self._pair, now)

    def _exchange_grant(self, params: dict[str, str], now: float) -> TokenAnswer:
        if (params.get("subject_token_type") != OFFLINE_TOKEN_TYPE
                or params.get("requested_token_type") != OFFLINE_TOKEN_TYPE):
            return oauth_error(400, "invalid_request", "Only an offline access token can be exchanged here: "
                                                       f"subject_token_type and requested_token_type must be "
                                                       f"{OFFLINE_TOKEN_TYPE}.")
        if not _expiring(params):
            return oauth_error(400, "invalid_request", "expiring=1 is required to exchange an offline access "
                                                       "token.")
        subject = params.get("subject_token", "")
        if not subject:
            return oauth_error(400, "missing_subject_token", "Missing parameter: subject_token.")
        if self.faults.revoked:
            return _invalid_subject_token()
        if self._static is not None and subject == self._static:
            # The non-expiring token stops working once exchanged.
            self._static = None
            self._retained = None
            self._pair = self._new_pair(now)
            self._migration = _Migration(subject, self._pair, now + self._real(self.config.migration_retry_seconds))
            return self._pair_answer(self._pair, now)
        migration = self._migration
        if (migration is not None and migration.pair is self._pair and now < migration.until
                and subject == migration.subject_token):
            # A retry of a lost migration answer: the same pair, the access token's life renewed, the
            # refresh token's not.
            migration.pair.access_expires = now + self._real(self.config.access_token_seconds)
            return self._pair_answer(migration.pair, now)
        return _invalid_subject_token()

    # -- helpers -----------------------------------------------------------------------------------

    def _real(self, shopify_seconds: float) -> float:
        return shopify_seconds / self.time_scale

    def _scope(self) -> str:
        return ",".join(self._scopes())

    def _new_pair(self, now: float) -> _Pair:
        self._counts["tokens_issued"] += 1
        return _Pair("shpat_" + secrets.token_hex(16), "shprt_" + secrets.token_hex(16),
                     now + self._real(self.config.access_token_seconds),
                     now + self._real(self.config.refresh_token_seconds))

    def _pair_answer(self, pair: _Pair, now: float) -> TokenAnswer:
        return TokenAnswer(200, {
            "access_token": pair.access_token,
            "scope": self._scope(),
            "expires_in": _seconds_field(pair.access_expires - now),
            "refresh_token": pair.refresh_token,
            "refresh_token_expires_in": _seconds_field(pair.refresh_expires - now),
        })


def _expiring(params: dict[str, str]) -> bool:
    return params.get("expiring", "").strip().lower() in ("1", "true")


def _invalid_refresh_token() -> TokenAnswer:
    return oauth_error(400, "invalid_grant", "The refresh token is invalid, expired, revoked, or was replaced.")


def _invalid_subject_token() -> TokenAnswer:
    return oauth_error(400, "invalid_request", "Invalid subject token")
