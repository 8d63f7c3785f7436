"""Shopify's list parameters and cursor pagination: validation, opaque page_info, Link headers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

DEFAULT_LIMIT = 50
MAX_LIMIT = 250

TIME_FILTERS = ("created_at_min", "created_at_max", "updated_at_min", "updated_at_max")
# First-page filters per resource; anything else in the query string is ignored, as Shopify does.
FILTERS = {
    "orders": ("status", "since_id", "ids", *TIME_FILTERS),
    "products": ("status", "since_id", "ids", *TIME_FILTERS),
    "customers": ("since_id", "ids", *TIME_FILTERS),
    "events": ("filter", "verb", "since_id", *TIME_FILTERS),
}
STATUSES = {
    "orders": {"open", "closed", "cancelled", "any"},
    "products": {"active", "archived", "draft"},
}
ORDER_FIELDS = ("id", "created_at", "updated_at")
DEFAULT_ORDER = ("id", "asc")


class BadRequest(Exception):
    """A 400 answer; `body` is the JSON Shopify sends."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body))
        self.body = body


def invalid(name: str) -> BadRequest:
    """Shopify's answer to a parameter it cannot use: {"errors":{"<name>":"Invalid value."}}."""
    return BadRequest({"errors": {name: "Invalid value."}})


@dataclass
class ListRequest:
    """A list request after validation: filters (JSON-ready), sort order, page size and position."""

    filters: dict[str, Any]
    order: tuple[str, str] = DEFAULT_ORDER
    limit: int = DEFAULT_LIMIT
    fields: list[str] | None = None
    cursor: tuple[int, int] | None = None
    direction: str = "next"
    page: int = 1


class PageTokens:
    """Encodes and checks page_info: base64url of JSON, with a MAC so a tampered token is rejected."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: dict[str, Any]) -> str:
        message = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:20]

    def encode(self, request: ListRequest, cursor: tuple[int, int], direction: str, page: int) -> str:
        """The page_info of the page after (direction "next") or before ("prev") `cursor`."""
        payload = {"filters": request.filters, "order": list(request.order), "last_value": cursor[0],
                   "last_id": cursor[1], "direction": direction, "page": page}
        payload["signature"] = self._mac(payload)
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, token: str) -> dict[str, Any]:
        """The payload of a page_info; BadRequest("Invalid value.") if it is malformed or altered."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = json.loads(raw)
            signature = payload.pop("signature")
        except (ValueError, binascii.Error, AttributeError, KeyError, TypeError) as error:
            raise invalid("page_info") from error
        if not isinstance(signature, str) or not hmac.compare_digest(signature, self._mac(payload)):
            raise invalid("page_info")
        return payload

    def peek_page(self, token: str | None) -> int:
        """The page number a request asks for (1 without page_info, 0 when the token is unusable)."""
        if not token:
            return 1
        try:
            return int(self.decode(token)["page"])
        except (BadRequest, KeyError, TypeError, ValueError):
            return 0


def parse_time(name: str, value: str, local: timezone) -> int:
    """An ISO-8601 query value as epoch seconds; without an offset it is read in the shop's zone."""
    try:
        moment = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError as error:
        raise invalid(name) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=local)
    return int(moment.timestamp() // 1)


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def parse_limit(query: dict[str, list[str]]) -> int:
    """`limit`: default 50, at most 250 (Shopify's exact 400 beyond), at least 1."""
    raw = _single(query, "limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError as error:
        raise invalid("limit") from error
    if limit > MAX_LIMIT:
        raise BadRequest({"errors": f"Limit exceeds maximum limit of {MAX_LIMIT}"})
    if limit < 1:
        raise invalid("limit")
    return limit


def parse_fields(query: dict[str, list[str]]) -> list[str] | None:
    """`fields=id,updated_at` as a list of top-level keys, or None for whole documents."""
    raw = _single(query, "fields")
    if not raw:
        return None
    return [name.strip() for name in raw.split(",") if name.strip()]


def parse_filters(resource: str, query: dict[str, list[str]], local: timezone) -> dict[str, Any]:
    """The first-page filters of a list or count request, normalised to JSON-ready values."""
    filters: dict[str, Any] = {}
    for name in FILTERS[resource]:
        raw = _single(query, name)
        if raw is None or raw == "":
            continue
        if name in TIME_FILTERS:
            filters[name] = parse_time(name, raw, local)
        elif name == "since_id":
            try:
                filters[name] = int(raw)
            except ValueError as error:
                raise invalid(name) from error
        elif name == "ids":
            try:
                filters[name] = sorted({int(part) for part in raw.split(",") if part.strip()})
            except ValueError as error:
                raise invalid(name) from error
        elif name == "status":
            statuses = [part.strip() for part in raw.split(",")]
            if not set(statuses) <= STATUSES[resource]:
                raise invalid(name)
            filters[name] = statuses
        else:
            filters[name] = [part.strip() for part in raw.split(",")]
    if resource == "orders":
        filters.setdefault("status", ["open"])
    return filters


def parse_order(query: dict[str, list[str]]) -> tuple[str, str]:
    """`order=updated_at asc` (also `+asc`, any case); unknown values fall back to id asc."""
    raw = _single(query, "order")
    if not raw:
        return DEFAULT_ORDER
    parts = raw.replace("+", " ").lower().split()
    if not parts or parts[0] not in ORDER_FIELDS:
        return DEFAULT_ORDER
    direction = parts[1] if len(parts) > 1 and parts[1] in ("asc", "desc") else "asc"
    return parts[0], direction


def parse_list_request(resource: str, query: dict[str, list[str]], tokens: PageTokens,
                       local: timezone) -> ListRequest:
    """A validated ListRequest, or BadRequest with Shopify's body for what Shopify refuses."""
    if "page" in query:
        raise BadRequest({"errors": {"page": "page cannot be passed."}})
    limit = parse_limit(query)
    fields = parse_fields(query)
    token = _single(query, "page_info")
    if token is None:
        return ListRequest(filters=parse_filters(resource, query, local), order=parse_order(query),
                           limit=limit, fields=fields)
    for name in query:
        if name not in ("page_info", "limit", "fields"):
            raise BadRequest({"errors": {name: f"{name} cannot be passed when page_info is present. See "
                                               "https://shopify.dev/api/usage/pagination-rest for more "
                                               "information."}})
    payload = tokens.decode(token)
    try:
        order = (str(payload["order"][0]), str(payload["order"][1]))
        cursor = (int(payload["last_value"]), int(payload["last_id"]))
        direction = str(payload["direction"])
        page = int(payload["page"])
        filters = dict(payload["filters"])
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise invalid("page_info") from error
    return ListRequest(filters=filters, order=order, limit=limit, fields=fields, cursor=cursor,
                       direction=direction, page=page)


def link_header(url: str, request: ListRequest, tokens: PageTokens, previous: tuple[int, int] | None,
                following: tuple[int, int] | None) -> str | None:
    """The Link header: rel="previous" first, then rel="next", each only when that page exists.

    `previous` is the cursor of the page's first record, `following` of its last; None when there is
    no page that way.
    """
    links = []
    params: dict[str, Any] = {"limit": request.limit}
    if request.fields:
        params["fields"] = ",".join(request.fields)
    if previous is not None:
        token = tokens.encode(request, previous, "prev", request.page - 1)
        links.append(f'<{url}?{urlencode({**params, "page_info": token})}>; rel="previous"')
    if following is not None:
        token = tokens.encode(request, following, "next", request.page + 1)
        links.append(f'<{url}?{urlencode({**params, "page_info": token})}>; rel="next"')
    return ", ".join(links) or None


def sixty_days_ago(now: float) -> int:
    """The oldest created_at a token without read_all_orders may see."""
    return int(now - timedelta(days=60).total_seconds())
