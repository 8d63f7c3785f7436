"""Shopify's GraphQL Admin API for one shop: queries paced by cost, THROTTLED waited out, errors typed,
connections paged to the end (nested ones included).

The HTTP side (deadline, no redirects, size cap, retries of 5xx and resets, 429s, status codes, the token
staying with the shop) is the `ShopifyClient`'s. This adds what GraphQL changes: one endpoint; a bucket of
cost points instead of requests; errors inside a 200 answer, never accepted silently (partial data with
errors is an error); and connections, whose nested connections (an order's line items, a product's
variants) are paged separately so that nothing is ever cut off.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from shopify_pipeline.shopify.client import ShopifyClient, UnexpectedAnswerError
from shopify_pipeline.shopify.cost_pacer import SINGLE_QUERY_MAX_COST, CostPacer, CostReading, page_size_for
from shopify_pipeline.shopify.errors import (
    BadRequestError,
    InvalidCursorError,
    MissingScopeError,
    ShopifyTransientError,
)

log = logging.getLogger(__name__)

_PROBE_PAGE = 10  # the first page of a connection when its cost per item is not known yet
_CONNECTION_COST = 2  # Shopify's cost of a connection itself, beside its items


class PartialDataError(ShopifyTransientError):
    """Shopify answered with data *and* errors: part of the answer is missing, so none of it is used."""


class QueryTooCostlyError(BadRequestError):
    """A query above Shopify's single-query maximum cost (ours to fix: ask for fewer items)."""

    reason = "query_too_costly"


@dataclass
class GraphQLAnswer:
    """One answered query: its data, its cost reading, and the API version that answered."""

    data: dict
    cost: CostReading | None
    api_version: str | None


class CostPacers:
    """One CostPacer per shop, shared by every GraphQL client of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pacers: dict[str, CostPacer] = {}

    def for_shop(self, shop: str) -> CostPacer:
        with self._lock:
            return self._pacers.setdefault(shop, CostPacer())


COST_PACERS = CostPacers()


class GraphQLClient:
    """Queries one shop's GraphQL Admin API through a ShopifyClient (same session, deadline and rules)."""

    def __init__(self, client: ShopifyClient, pacer: CostPacer | None = None) -> None:
        self.client = client
        self.pacer = pacer or COST_PACERS.for_shop(client.base_url)
        self.url = client.api_url("graphql.json")
        self._requested: dict[tuple[str, int | None], float] = {}  # (query, first) -> last requested cost
        self._sizes: dict[str, int] = {}  # query -> the page size its cost allows, once an answer said
        self._per_item: dict[str, float] = {}  # query -> requested cost of one item of its connection

    def execute(self, query: str, variables: dict | None = None, expected_cost: float | None = None) -> GraphQLAnswer:
        """Run one query. Waits for its cost to be available first, and again after a THROTTLED answer (which
        does not use up error retries). Errors Shopify calls internal, and partial data, are asked again with
        the client's backoff (1 → 2 → 4 s); every other error raises a typed ShopifyError at once.

        The cost waited for is what Shopify last requested for this query and `first`; before any answer
        said so, `expected_cost` when the caller can tell, else the single-query maximum."""
        variables = variables or {}
        key = (query, variables.get("first"))
        settings = self.client.settings
        throttled = failures = 0
        while True:
            unknown = expected_cost if expected_cost is not None else SINGLE_QUERY_MAX_COST
            requested = self._requested.get(key, min(self.pacer.maximum, unknown))
            waited = self.pacer.acquire(requested)
            waited_for = min(requested, self.pacer.maximum)  # what acquire reserved
            self.client.stats.add(pace_wait_seconds=waited)
            document, answer = self.client.request_json("POST", self.url, {"query": query, "variables": variables},
                                                        paced=False)
            reading = CostReading.of(document.get("extensions"))
            errors = document.get("errors") or []
            if _has_code(errors, "THROTTLED"):
                throttled += 1
                if throttled > settings.max_throttle_waits:
                    raise ShopifyTransientError(
                        f"Shopify kept answering THROTTLED after {settings.max_throttle_waits} waits", 429)
                if reading is not None and reading.requested:
                    self._requested[key] = reading.requested
                # The pacer now holds Shopify's count: the next acquire waits just long enough.
                wait = self.pacer.throttled(reading, self._requested.get(key, requested))
                log.info("GraphQL query throttled by Shopify (cost %s): waiting %.1f s",
                         reading.requested if reading else "?", wait)
                self.client.stats.add(throttled=1, throttle_wait_seconds=wait)
                continue
            self.pacer.observe(reading, reserved=waited_for)
            if reading is not None and reading.requested:
                self._requested[key] = reading.requested
            if errors:
                error = _typed_error(errors, document.get("data"), self.client.base_url)
                if isinstance(error, ShopifyTransientError) and failures < settings.retries:
                    failures += 1
                    log.warning("%s; retry %d of %d", error, failures, settings.retries)
                    self.client.stats.add(retries=1)
                    self.client.wait_before_retry(failures)
                    continue
                raise error
            data = document.get("data")
            if not isinstance(data, dict):
                raise UnexpectedAnswerError("Shopify's GraphQL answer has neither data nor errors")
            return GraphQLAnswer(data, reading, answer.headers.get("X-Shopify-API-Version"))

    @property
    def answered_version(self) -> str | None:
        return self.client.answered_version

    def connection_pages(self, query: str, root: str, variables: dict | None = None,
                         first: int | None = None, after: str | None = None) -> Iterator[tuple[list[dict], dict]]:
        """Every page of the connection `root` of `query` (which takes `$first` and `$after`), as
        (nodes, pageInfo). Stops when `hasNextPage` is false; a cursor that repeats is an error.

        Without `first`, the page size is chosen by cost: a small first page says what one item costs, then
        every page asks for as many as fit under the single-query maximum and the bucket."""
        seen: set[str] = set()
        while True:
            nodes, page_info = self.connection_page(query, root, variables, after, first)
            yield nodes, page_info
            if not page_info.get("hasNextPage"):
                return
            after = page_info["endCursor"]
            if after in seen:
                raise UnexpectedAnswerError(f"Shopify's {root} cursor repeats (a cursor loop)")
            seen.add(after)

    def connection_page(self, query: str, root: str, variables: dict | None = None, after: str | None = None,
                        first: int | None = None) -> tuple[list[dict], dict]:
        """One page of the connection `root` of `query`, after the cursor `after`, as (nodes, pageInfo).

        Without `first`, the size is the largest the query's cost allows, learned from the first answer."""
        size = first or self._sizes.get(query, _PROBE_PAGE)
        per_item = self._per_item.get(query)
        expected = None if per_item is None else _CONNECTION_COST + size * per_item
        answer = self.execute(query, {**(variables or {}), "first": size, "after": after}, expected)
        if answer.cost is not None and answer.cost.requested:
            self._per_item[query] = max(0.0, (answer.cost.requested - _CONNECTION_COST) / size)
            if first is None:
                self._sizes[query] = page_size_for(self._per_item[query], _CONNECTION_COST, self.pacer.maximum)
        return connection_of(answer.data.get(root), f"the {root} connection")

    def complete_nested(self, nodes: list[dict], field: str, node_query: str, first: int = 250,
                        expected_cost: float | None = None) -> int:
        """Page `field` (a nested connection with `nodes` and `pageInfo`) of every node to its end, in place,
        with `node_query` (taking `$id`, `$first`, `$after` and selecting `node(id:) { … on T { field … } }`).
        Every node must carry the connection, whole or with a next page. Returns how many extra queries it
        took; more than MAX_NESTED_ITEMS items in one node is an error, not an endless fetch. `expected_cost` is
        what one such query should cost, waited for until Shopify's first answer says."""
        queries = 0
        for node in nodes:
            where = f"the {field} of {str(node.get('id'))[:80]}"
            items, page_info = connection_of(node.get(field), where)
            seen: set[str] = set()
            while page_info["hasNextPage"]:
                cursor = page_info["endCursor"]
                if cursor in seen:
                    raise UnexpectedAnswerError(f"Shopify's cursor of {where} repeats (a cursor loop)")
                if len(items) > MAX_NESTED_ITEMS:
                    raise UnexpectedAnswerError(f"{where} goes on past {MAX_NESTED_ITEMS} items; stopped")
                seen.add(cursor)
                answer = self.execute(node_query, {"id": node["id"], "first": first, "after": cursor},
                                      expected_cost)
                queries += 1
                found = answer.data.get("node")
                if not isinstance(found, dict):
                    raise UnexpectedAnswerError(f"Shopify no longer finds {str(node.get('id'))[:80]} to page {field}")
                more, page_info = connection_of(found.get(field), where)
                items.extend(more)
            node[field] = {**node[field], "nodes": items, "pageInfo": page_info}
        return queries


MAX_NESTED_ITEMS = 100_000  # Shopify allows 2 048 variants a product; no shop has orders this long


def connection_of(value: object, where: str) -> tuple[list[dict], dict]:
    """(nodes, pageInfo) of a connection as Shopify returns it, or UnexpectedAnswerError: it must be an object
    with a list of objects (`nodes`, or `edges[].node`) and a `pageInfo` whose `hasNextPage` is a boolean and,
    when true, comes with an `endCursor`. Anything less could end a listing early without a word."""
    if not isinstance(value, dict):
        raise UnexpectedAnswerError(f"Shopify's answer has no {where} (got {type(value).__name__})")
    nodes = value.get("nodes")
    if nodes is None and isinstance(value.get("edges"), list):
        edges = value["edges"]
        nodes = [edge.get("node") if isinstance(edge, dict) else None for edge in edges]
    if not isinstance(nodes, list) or not all(isinstance(node, dict) for node in nodes):
        raise UnexpectedAnswerError(f"Shopify's {where} has no list of objects as its nodes")
    page_info = value.get("pageInfo")
    if not isinstance(page_info, dict) or not isinstance(page_info.get("hasNextPage"), bool):
        raise UnexpectedAnswerError(f"Shopify's {where} has no pageInfo with a hasNextPage true or false")
    if page_info["hasNextPage"] and not (isinstance(page_info.get("endCursor"), str) and page_info["endCursor"]):
        raise UnexpectedAnswerError(f"Shopify's {where} says there is a next page but gives no endCursor")
    return nodes, page_info


_INVALID_CURSOR = re.compile(r"invalid[^.;]*cursor|cursor[^.;]*invalid", re.IGNORECASE)


def _has_code(errors: list, code: str) -> bool:
    return any(isinstance(e, dict) and (e.get("extensions") or {}).get("code") == code for e in errors)


def _messages(errors: list) -> str:
    texts = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors[:3]]
    return "; ".join(texts)[:500]


def _typed_error(errors: list, data: object, shop: str) -> Exception:
    """The error a GraphQL `errors` list means, with what to do."""
    text = _messages(errors)
    if _has_code(errors, "ACCESS_DENIED"):
        return MissingScopeError(
            f"Shopify denied part of the query for {shop} (ACCESS_DENIED: {text}). Ask the merchant to approve the "
            "scope it names and reconnect.", 403)
    if _has_code(errors, "MAX_COST_EXCEEDED"):
        return QueryTooCostlyError(f"Shopify refused a query above the single-query maximum cost ({text}).")
    if _INVALID_CURSOR.search(text) and not _has_code(errors, "INTERNAL_SERVER_ERROR"):
        return InvalidCursorError(f"Shopify refused the page cursor ({text}); the slice restarts from its last "
                                  "durable position", 400)
    if isinstance(data, dict) and any(value is not None for value in data.values()):
        return PartialDataError(f"Shopify answered with partial data and errors ({text}); nothing of it is used")
    if _has_code(errors, "INTERNAL_SERVER_ERROR"):
        return ShopifyTransientError(f"Shopify's GraphQL API failed internally ({text})")
    return BadRequestError(f"Shopify refused the GraphQL query ({text})")
