"""Page sources: how the sync engine reads a listing from Shopify, one page at a time, over one API.

The engine plans slices, stages pages, saves checkpoints and loads batches the same way for every API;
a source is the seam under it. It answers these questions: which scopes the token has, how many records a
listing holds (all, or those created up to a moment), when the oldest was created, how many records a page
holds and how many pages the rate limit lets run at once (these four to plan slices), what the page at a
position is, and which records were deleted since a moment. A position is opaque to the engine: REST's is
the next link without its host, GraphQL's the connection's `endCursor`; None is the first page. Both are
small enough to live in the checkpoint, so a killed sync resumes at the page it was fetching.

A staged page body is `{"<data type>": [records …]}` for both APIs, with the records as that API returns
them (REST's exact bytes; GraphQL's nodes with their nested connections paged to the end).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from shopify_pipeline.dynamo.codec import GRAPHQL, REST
from shopify_pipeline.exact_json import dumps_json
from shopify_pipeline.shopify.bulk_records import bulk_query
from shopify_pipeline.shopify.client import ClientStats, ShopifyClient, UnexpectedAnswerError
from shopify_pipeline.shopify.cost_pacer import SINGLE_QUERY_MAX_COST, page_size_for
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.shopify.pacer import Pacer

log = logging.getLogger(__name__)

APIS = (GRAPHQL, REST)
_GID = re.compile(r"^gid://shopify/[A-Za-z]+/[0-9]+$", re.ASCII)
DEFAULT_API = GRAPHQL


@dataclass
class SourcePage:
    """One fetched page: its records, the body to stage, where it came from, and the next page's position."""

    records: list[dict]
    body: bytes
    where: str
    next: str | None


class PageSource(Protocol):
    api: str
    stats: ClientStats
    # How exact the last count of each data type is: "EXACT", or "AT_LEAST" when Shopify stopped counting.
    count_precision: dict[str, str]

    @property
    def answered_version(self) -> str | None: ...
    def granted_scopes(self) -> set[str]: ...
    def count(self, data_type: str) -> int: ...
    def count_created(self, data_type: str, up_to: str) -> int: ...
    def oldest_created_at(self, data_type: str) -> str | None: ...
    def page_size(self, data_type: str) -> int: ...
    def parallel_pages(self) -> int | None: ...
    def page(self, data_type: str, filters: dict, position: str | None) -> SourcePage: ...
    def deletions_page(self, data_type: str, since: str, position: str | None) -> SourcePage: ...
    def close(self) -> None: ...


def page_source(api: str, client: ShopifyClient) -> PageSource:
    """The source for a connection's API (`graphql` or `rest`) over `client`."""
    if api == GRAPHQL:
        return GraphQLSource(client)
    if api == REST:
        return RestSource(client)
    raise ValueError(f"unknown Shopify API {api!r}; expected one of {', '.join(APIS)}")


# Filters ---------------------------------------------------------------------------------------------
# A slice's filters are the same for both APIs: {"created_at_min", "created_at_max", "updated_at_min"},
# ISO-8601 UTC seconds, every bound inclusive. Each source turns them into its own parameters.


class RestSource:
    """The REST Admin API (legacy since 2024-10; REST products return at most 100 variants each)."""

    api = REST

    def __init__(self, client: ShopifyClient) -> None:
        self.client = client
        self.stats = client.stats
        self.count_precision: dict[str, str] = {}  # REST's count.json is always exact

    @property
    def answered_version(self) -> str | None:
        return self.client.answered_version

    def granted_scopes(self) -> set[str]:
        return self.client.granted_scopes()

    def count(self, data_type: str) -> int:
        return self.client.count(data_type)

    def count_created(self, data_type: str, up_to: str) -> int:
        """Shopify's count of the records created at or before `up_to` (ISO-8601 UTC, to the second)."""
        return self.client.count(data_type, {"created_at_max": up_to})

    def page_size(self, data_type: str) -> int:
        """The records one page of a listing holds (the `limit` we ask for)."""
        return self.client.settings.page_size

    def parallel_pages(self) -> int | None:
        """How many requests the shop's bucket, as last read, lets run at once (what the pacer keeps free of its
        margin); None when a fixed gap paces the client instead."""
        pacer = self.client.pacer
        if not isinstance(pacer, Pacer):
            return None
        return max(1, pacer.size - pacer.margin)

    def oldest_created_at(self, data_type: str) -> str | None:
        url = self.client.first_page_url(data_type, {"limit": 1, "order": "created_at asc", "fields": "id,created_at"})
        records = self.client.fetch_page(data_type, url).records
        oldest = records[0] if records and isinstance(records[0], dict) else {}
        return oldest.get("created_at") if isinstance(oldest.get("created_at"), str) else None

    def page(self, data_type: str, filters: dict, position: str | None) -> SourcePage:
        url = self._absolute(position) if position else self.client.first_page_url(data_type, dict(filters))
        return self._page(data_type, url)

    def deletions_page(self, data_type: str, since: str, position: str | None) -> SourcePage:
        url = self._absolute(position) if position else self.client.deletion_events_url(data_type, since)
        return self._page("events", url)

    def close(self) -> None:
        self.client.close()

    def _page(self, resource: str, url: str) -> SourcePage:
        page = self.client.fetch_page(resource, url)
        return SourcePage(page.records, page.body, url, _path(page.next_url))

    def _absolute(self, path: str) -> str:
        parts = urlsplit(self.client.base_url)
        return f"{parts.scheme}://{parts.netloc}{path}"


def _path(url: str | None) -> str | None:
    """A next link without its scheme and host (the checkpoint stays small; the host is the shop's)."""
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


# GraphQL -------------------------------------------------------------------------------------------

_MONEY = "shopMoney { amount currencyCode } presentmentMoney { amount currencyCode }"
_PAGE_INFO = "pageInfo { hasNextPage endCursor }"

# What a sync stores of each record. A nested connection asks for a few items in the listing (its `first`
# multiplies the listing's requested cost, which caps the page size); records with more are completed
# by `NESTED_QUERIES`, so nothing is cut off.
LINE_ITEM_FIELDS = f"id name title quantity sku variantTitle originalUnitPriceSet {{ {_MONEY} }}"
VARIANT_FIELDS = ("id legacyResourceId title sku price compareAtPrice barcode position inventoryQuantity "
                  "createdAt updatedAt")
ADDRESS_FIELDS = ("id firstName lastName company address1 address2 city province provinceCode country "
                  "countryCodeV2 zip phone")

# Each record's own fields, then its nested connection (first few items inline; the rest by NESTED_QUERIES).
RECORD_SCALARS = {
    "orders": (
        "id legacyResourceId name email createdAt updatedAt processedAt cancelledAt closedAt "
        "displayFinancialStatus displayFulfillmentStatus currencyCode "
        f"totalPriceSet {{ {_MONEY} }} subtotalPriceSet {{ {_MONEY} }} totalTaxSet {{ {_MONEY} }} "
        "tags note test customer { id legacyResourceId }"
    ),
    "products": ("id legacyResourceId title handle status vendor productType descriptionHtml createdAt updatedAt "
                 "publishedAt tags"),
    "customers": "id legacyResourceId email firstName lastName phone state note createdAt updatedAt tags",
}
INLINE_ITEMS = {"orders": 10, "products": 25, "customers": 5}  # nested items a listing asks for per record
RECORD_FIELDS = {
    "orders": (f"{RECORD_SCALARS['orders']} lineItems(first: {INLINE_ITEMS['orders']}) "
               f"{{ nodes {{ {LINE_ITEM_FIELDS} }} {_PAGE_INFO} }}"),
    "products": (f"{RECORD_SCALARS['products']} variants(first: {INLINE_ITEMS['products']}) "
                 f"{{ nodes {{ {VARIANT_FIELDS} }} {_PAGE_INFO} }}"),
    "customers": (f"{RECORD_SCALARS['customers']} addressesV2(first: {INLINE_ITEMS['customers']}) "
                  f"{{ nodes {{ {ADDRESS_FIELDS} }} {_PAGE_INFO} }}"),
}
TYPE_NAMES = {"orders": "Order", "products": "Product", "customers": "Customer"}
RECORD_QUERY_COST = 100  # what one record's query (`GraphQLSource.record`) is expected to cost at most
SORT_KEYS = {"orders": "OrderSortKeys", "products": "ProductSortKeys", "customers": "CustomerSortKeys"}

# (nested connection, its fields, items per query, cost of one item by Shopify's rules: an object 1, each
# object inside it 1) of each data type. A query for the rest costs 1 (the node) + 2 (the connection) +
# items × item cost: 100 line items (each with a money bag of two amounts) cost 403 points.
NESTED = {
    "orders": ("lineItems", LINE_ITEM_FIELDS, 100, 4),
    "products": ("variants", VARIANT_FIELDS, 250, 1),
    "customers": ("addressesV2", ADDRESS_FIELDS, 250, 1),
}


def listing_query(data_type: str) -> str:
    """The query of one page of a listing, filtered by `$query` and sorted by `$sortKey`."""
    return (
        f"query Sync($first: Int!, $after: String, $query: String, $sortKey: {SORT_KEYS[data_type]}) "
        f"{{ {data_type}(first: $first, after: $after, query: $query, sortKey: $sortKey) "
        f"{{ nodes {{ {RECORD_FIELDS[data_type]} }} {_PAGE_INFO} }} }}"
    )


def nested_query(data_type: str) -> str:
    """The query of the rest of one record's nested connection, after its cursor."""
    field, fields, _, _ = NESTED[data_type]
    return (
        f"query Rest($id: ID!, $first: Int!, $after: String) {{ node(id: $id) {{ ... on {TYPE_NAMES[data_type]} "
        f"{{ {field}(first: $first, after: $after) {{ nodes {{ {fields} }} {_PAGE_INFO} }} }} }} }}"
    )


def bulk_listing_query(data_type: str, filters: dict | None = None) -> str:
    """The bulk query that exports what `listing_query` pages through: the same fields, every nested item."""
    field, fields, _, _ = NESTED[data_type]
    return bulk_query(RECORD_SCALARS[data_type], field, fields, data_type, search_query(filters or {}))


def bulk_listing_type(query: str | None) -> str | None:
    """The data type whose listing `query` exports when it is one of our bulk queries (whatever its search), so
    an operation a stopped run left behind is recognised; None for any other query."""
    unfiltered = re.sub(r'^(\{ \w+\(sortKey: ID), query: "(?:[^"\\]|\\.)*"\)', r"\1)", query or "")
    return next((data_type for data_type in NESTED if unfiltered == bulk_listing_query(data_type)), None)


DELETIONS_QUERY = (
    "query Deleted($first: Int!, $after: String, $query: String) { events(first: $first, after: $after, "
    "query: $query, sortKey: ID) { nodes { id action createdAt ... on BasicEvent { subjectType subjectId } } "
    f"{_PAGE_INFO} }} }}"
)
SCOPES_QUERY = "query Scopes { currentAppInstallation { accessScopes { handle } } }"
SUBJECT_TYPES = {"orders": "ORDER", "products": "PRODUCT", "customers": "CUSTOMER"}


def search_query(filters: dict) -> str | None:
    """Shopify's search syntax for a slice's filters (dates quoted, bounds inclusive; `id_after` exclusive:
    what a bulk export still misses after the records it has; `id_max` inclusive, to count what it has)."""
    terms = []
    for key, field, op in (("created_at_min", "created_at", ">="), ("created_at_max", "created_at", "<="),
                           ("updated_at_min", "updated_at", ">=")):
        if filters.get(key):
            terms.append(f"{field}:{op}'{filters[key]}'")
    if filters.get("id_after") is not None:
        terms.append(f"id:>{int(filters['id_after'])}")
    if filters.get("id_max") is not None:
        terms.append(f"id:<={int(filters['id_max'])}")
    if filters.get("id") is not None:
        terms.append(f"id:{int(filters['id'])}")
    return " AND ".join(terms) or None


class GraphQLSource:
    """The GraphQL Admin API: pages sized by cost, nested connections paged to their end."""

    api = GRAPHQL

    def __init__(self, client: ShopifyClient) -> None:
        self.client = client
        self.graphql = GraphQLClient(client)
        self.stats = client.stats
        self.nested_queries = 0  # extra queries that completed nested connections
        self.count_precision: dict[str, str] = {}

    @property
    def answered_version(self) -> str | None:
        return self.client.answered_version

    def granted_scopes(self) -> set[str]:
        scopes = (self.graphql.execute(SCOPES_QUERY).data.get("currentAppInstallation") or {}).get("accessScopes")
        if not isinstance(scopes, list) or not all(isinstance(s, dict) and isinstance(s.get("handle"), str)
                                                   for s in scopes):
            raise UnexpectedAnswerError("Shopify's accessScopes are not a list of {handle: ...} objects")
        return {scope["handle"] for scope in scopes}

    def count(self, data_type: str, search: str | None = None) -> int:
        """Shopify's exact count (`limit: null`; the default stops at 10 000), of those matching `search`."""
        field = f"{data_type}Count"
        answer = self.graphql.execute(f"query Count($query: String) {{ {field}(query: $query, limit: null) "
                                      "{ count precision } }", {"query": search})
        counted = answer.data.get(field) or {}
        count, precision = counted.get("count"), counted.get("precision") or "EXACT"
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UnexpectedAnswerError(f"Shopify's {field} is not a number: {str(count)[:40]!r}")
        if precision != "EXACT":
            log.warning("Shopify's %s is %s %d, not an exact count", field, precision, count)
        self.count_precision[data_type] = str(precision)
        return count

    def count_created(self, data_type: str, up_to: str) -> int:
        """Shopify's count of the records created at or before `up_to` (ISO-8601 UTC, to the second)."""
        return self.count(data_type, search_query({"created_at_max": up_to}))

    def page_size(self, data_type: str) -> int:
        """About how many records one page of a listing holds: as many as the single-query maximum cost allows
        (an estimate by Shopify's cost rules; the pages themselves are sized from the costs Shopify answers)."""
        item_cost = NESTED[data_type][3]
        # The record 1, its small objects (money bags, a customer) about 10, its nested connection 2 + items.
        per_record = 1 + 10 + 2 + INLINE_ITEMS[data_type] * item_cost
        return page_size_for(per_record, 2, self.graphql.pacer.maximum)

    def parallel_pages(self) -> int | None:
        """How many pages the cost bucket, as last read, holds at once (a page costs up to the single-query
        maximum)."""
        return max(1, int(self.graphql.pacer.maximum // SINGLE_QUERY_MAX_COST))

    def oldest_created_at(self, data_type: str) -> str | None:
        query = f"query Oldest {{ {data_type}(first: 1, sortKey: CREATED_AT) {{ nodes {{ createdAt }} }} }}"
        nodes = (self.graphql.execute(query).data.get(data_type) or {}).get("nodes")
        if not nodes or not isinstance(nodes, list) or not isinstance(nodes[0], dict):
            return None
        created = nodes[0].get("createdAt")
        return created if isinstance(created, str) else None

    def page(self, data_type: str, filters: dict, position: str | None) -> SourcePage:
        # Daily syncs read by UPDATED_AT (Shopify breaks ties by id); full syncs by id within a created_at slice.
        variables = {"query": search_query(filters),
                     "sortKey": "UPDATED_AT" if filters.get("updated_at_min") else "ID"}
        nodes, page_info = self.graphql.connection_page(listing_query(data_type), data_type, variables, position)
        for node in nodes:  # a node that is not a record of this type is a broken answer: the page fails
            if not _GID.match(str(node.get("id"))) or node["id"].split("/")[3] != TYPE_NAMES[data_type]:
                raise UnexpectedAnswerError(f"Shopify's {data_type} page holds a node whose id is not a "
                                            f"gid://shopify/{TYPE_NAMES[data_type]}/…: {str(node.get('id'))[:80]!r}")
        field, _, first, item_cost = NESTED[data_type]
        self.nested_queries += self.graphql.complete_nested(nodes, field, nested_query(data_type), first,
                                                            expected_cost=3 + first * item_cost)
        for node in nodes:  # complete now: the last page's cursor means nothing in a stored document
            node[field].pop("pageInfo", None)
        return self._page(data_type, nodes, page_info, position)

    def record(self, data_type: str, record_id: int) -> dict | None:
        """One record by its numeric id, read directly (`node(id:)`, not the search index, which lags new
        records), complete as a page's records are; None when Shopify has no such record."""
        query = (f"query One($id: ID!) {{ node(id: $id) {{ ... on {TYPE_NAMES[data_type]} "
                 f"{{ {RECORD_FIELDS[data_type]} }} }} }}")
        # About 50 points (P9 measured 53 for an order); without it a fresh client reserves the 1 000 maximum
        # until Shopify's first answer, and a burst of webhooks waits for points it will not use.
        node = self.graphql.execute(query, {"id": f"gid://shopify/{TYPE_NAMES[data_type]}/{int(record_id)}"},
                                    expected_cost=RECORD_QUERY_COST).data.get("node")
        if node is None:
            return None
        if not isinstance(node, dict) or node.get("legacyResourceId") not in (str(record_id), record_id):
            raise UnexpectedAnswerError(f"Shopify answered node({data_type} {record_id}) with another object")
        field, _, first, item_cost = NESTED[data_type]
        self.nested_queries += self.graphql.complete_nested([node], field, nested_query(data_type), first,
                                                            expected_cost=3 + first * item_cost)
        node[field].pop("pageInfo", None)
        return node

    def deletions_page(self, data_type: str, since: str, position: str | None) -> SourcePage:
        query = f"action:destroy AND subject_type:{SUBJECT_TYPES[data_type]} AND created_at:>='{since}'"
        nodes, page_info = self.graphql.connection_page(DELETIONS_QUERY, "events", {"query": query}, position,
                                                        first=250)
        return self._page("events", nodes, page_info, position)

    def close(self) -> None:
        self.client.close()

    def _page(self, root: str, nodes: list[dict], page_info: dict, position: str | None) -> SourcePage:
        following = page_info["endCursor"] if page_info["hasNextPage"] else None  # checked by connection_of
        where = f"graphql {root} " + (f"after {position[:40]}" if position else "first page")
        return SourcePage(nodes, dumps_json({root: nodes}).encode(), where, following)
