"""Shopify's GraphQL Admin API over the same seeded records as REST: schema, resolvers and query cost.

Every order, product and customer is derived from the REST document of the same record: `id` is
gid://shopify/<Type>/<REST id>, `legacyResourceId` the REST id as a string, timestamps are UTC with `Z`,
money is a string. A REST sync and a GraphQL sync of one shop can therefore be compared record by record.
Root connections page by keyset on (sort value, id) like the REST listings, so they stay gap-free while
records change; nested connections (line items, variants, addresses) page by position.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInt,
    GraphQLNamedType,
    GraphQLString,
    GraphQLSyntaxError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    execute_sync,
    get_named_type,
    get_operation_ast,
    is_leaf_type,
    is_non_null_type,
    parse,
    validate,
    value_from_ast,
)

from shopify_pipeline.simulator.bucket import CostBucket
from shopify_pipeline.simulator.data import US, Record
from shopify_pipeline.simulator.paging import ListRequest, sixty_days_ago
from shopify_pipeline.simulator.shop import ShopRuntime
from shopify_pipeline.simulator.store import SORT_ATTRIBUTES, Event

# Shopify's documented cost rules (shopify.dev/docs/api/usage/rate-limits), each point charged up front.
OBJECT_COST = 1  # every object selected; scalars and enums are free
CONNECTION_COST = 2  # a connection costs this plus one per object asked for with `first`
MAX_QUERY_COST = 1000  # the single-query maximum: a costlier query is refused, not run
MAX_PAGE_SIZE = 250  # the largest `first` Shopify accepts
RATE_LIMITS_DOCUMENTATION = "https://shopify.dev/api/usage/rate-limits"
ACCESS_SCOPES_DOCUMENTATION = "https://shopify.dev/api/usage/access-scopes"

SCOPES_NEEDED = {"orders": "read_orders", "products": "read_products", "customers": "read_customers"}
SORT_FIELDS = {"ID": "id", "CREATED_AT": "created_at", "UPDATED_AT": "updated_at", "PROCESSED_AT": "created_at"}
TYPE_NAMES = {"orders": "Order", "products": "Product", "customers": "Customer"}
DATA_TYPES_BY_NAME = {name: data_type for data_type, name in TYPE_NAMES.items()}
GID = re.compile(r"^gid://shopify/(?P<type>[A-Za-z]+)/(?P<id>\d+)$")
# One search term: `field:value`, `field:>=value`, with the value optionally in single or double quotes.
SEARCH_TOKEN = re.compile(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""")
SEARCH_TERM = re.compile(r"""^(?P<field>[a-z_]+):(?P<op>>=|<=|>|<|=)?(?P<value>'[^']*'|"[^"]*"|[^'"]+)$""")
FULFILLMENT_STATUSES = {None: "UNFULFILLED", "partial": "PARTIALLY_FULFILLED", "fulfilled": "FULFILLED",
                        "restocked": "RESTOCKED"}

SCHEMA_SDL = '''
schema {
  query: QueryRoot
  mutation: Mutation
}

"An ISO-8601 timestamp in UTC, e.g. 2026-01-10T16:00:00Z."
scalar DateTime
"A decimal number as a string, e.g. 598.94."
scalar Decimal
"A money amount as a string."
scalar Money
"A 64-bit unsigned integer as a string (it may exceed 2^53)."
scalar UnsignedInt64
scalar URL

enum CurrencyCode { USD CAD EUR GBP JPY }
enum CountPrecision { EXACT AT_LEAST }
enum OrderSortKeys { CREATED_AT ID PROCESSED_AT UPDATED_AT }
enum ProductSortKeys { CREATED_AT ID UPDATED_AT }
enum CustomerSortKeys { CREATED_AT ID UPDATED_AT }
enum EventSortKeys { CREATED_AT ID }
enum OrderDisplayFinancialStatus { AUTHORIZED EXPIRED PAID PARTIALLY_PAID PARTIALLY_REFUNDED PENDING REFUNDED VOIDED }
enum OrderDisplayFulfillmentStatus {
  FULFILLED IN_PROGRESS ON_HOLD OPEN PARTIALLY_FULFILLED PENDING_FULFILLMENT REQUEST_DECLINED RESTOCKED SCHEDULED
  UNFULFILLED
}
enum ProductStatus { ACTIVE ARCHIVED DRAFT }
enum CustomerState { DECLINED DISABLED ENABLED INVITED }
enum EventSubjectType { CUSTOMER ORDER PRODUCT }
enum BulkOperationStatus { CANCELED CANCELING COMPLETED CREATED EXPIRED FAILED RUNNING }
enum BulkOperationErrorCode { ACCESS_DENIED INTERNAL_SERVER_ERROR TIMEOUT }
enum BulkOperationType { MUTATION QUERY }
enum BulkOperationUserErrorCode { INVALID LIMIT_REACHED OPERATION_IN_PROGRESS }
enum BulkOperationsSortKeys { COMPLETED_AT CREATED_AT }
"The topics a subscription can name; compliance topics are app configuration, not API subscriptions."
enum WebhookSubscriptionTopic {
  APP_UNINSTALLED BULK_OPERATIONS_FINISH CUSTOMERS_CREATE CUSTOMERS_DELETE CUSTOMERS_UPDATE ORDERS_CREATE
  ORDERS_DELETE ORDERS_UPDATED PRODUCTS_CREATE PRODUCTS_DELETE PRODUCTS_UPDATE
}
enum WebhookSubscriptionFormat { JSON XML }
enum WebhookSubscriptionSortKeys { CREATED_AT ID }

interface Node {
  id: ID!
}

interface Event {
  id: ID!
  action: String!
  createdAt: DateTime!
  message: String!
}

type QueryRoot {
  shop: Shop!
  currentAppInstallation: AppInstallation!
  node(id: ID!): Node
  orders(first: Int!, after: String, query: String, sortKey: OrderSortKeys = ID,
    reverse: Boolean = false): OrderConnection
  products(first: Int!, after: String, query: String, sortKey: ProductSortKeys = ID,
    reverse: Boolean = false): ProductConnection
  customers(first: Int!, after: String, query: String, sortKey: CustomerSortKeys = ID,
    reverse: Boolean = false): CustomerConnection
  events(first: Int!, after: String, query: String, sortKey: EventSortKeys = ID,
    reverse: Boolean = false): EventConnection
  ordersCount(query: String, limit: Int = 10000): Count
  productsCount(query: String, limit: Int = 10000): Count
  customersCount(query: String, limit: Int = 10000): Count
  bulkOperation(id: ID!): BulkOperation
  currentBulkOperation(type: BulkOperationType = QUERY): BulkOperation
  "The app's bulk operations matching `query`, newest first by default (reverse: true for oldest first)."
  bulkOperations(first: Int, after: String, last: Int, before: String, query: String,
    sortKey: BulkOperationsSortKeys = CREATED_AT, reverse: Boolean = false): BulkOperationConnection!
  webhookSubscription(id: ID!): WebhookSubscription
  webhookSubscriptions(first: Int!, after: String, topics: [WebhookSubscriptionTopic!], uri: String, callbackUrl: URL,
    format: WebhookSubscriptionFormat, sortKey: WebhookSubscriptionSortKeys = CREATED_AT,
    reverse: Boolean = false): WebhookSubscriptionConnection!
}

type Mutation {
  "Start a bulk query; groupObjects defaults to false from 2026-01 on, true before."
  bulkOperationRunQuery(query: String!, groupObjects: Boolean): BulkOperationRunQueryPayload
  bulkOperationCancel(id: ID!): BulkOperationCancelPayload
  "Subscribe an address (`uri`; `callbackUrl` is its deprecated name) to a topic."
  webhookSubscriptionCreate(topic: WebhookSubscriptionTopic!,
    webhookSubscription: WebhookSubscriptionInput!): WebhookSubscriptionCreatePayload
  webhookSubscriptionUpdate(id: ID!, webhookSubscription: WebhookSubscriptionInput!): WebhookSubscriptionUpdatePayload
  webhookSubscriptionDelete(id: ID!): WebhookSubscriptionDeletePayload
}

input WebhookSubscriptionInput {
  uri: String
  callbackUrl: URL
  format: WebhookSubscriptionFormat
  includeFields: [String!]
}

type ApiVersion {
  handle: String!
  displayName: String!
  supported: Boolean!
}

type WebhookHttpEndpoint {
  callbackUrl: URL!
}

union WebhookSubscriptionEndpoint = WebhookHttpEndpoint

type WebhookSubscription implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  topic: WebhookSubscriptionTopic!
  format: WebhookSubscriptionFormat!
  uri: String!
  callbackUrl: URL!
  endpoint: WebhookSubscriptionEndpoint!
  apiVersion: ApiVersion!
  includeFields: [String!]!
  createdAt: DateTime!
  updatedAt: DateTime!
}

type WebhookSubscriptionConnection {
  edges: [WebhookSubscriptionEdge!]!
  nodes: [WebhookSubscription!]!
  pageInfo: PageInfo!
}

type WebhookSubscriptionEdge {
  cursor: String!
  node: WebhookSubscription!
}

type WebhookSubscriptionCreatePayload {
  webhookSubscription: WebhookSubscription
  userErrors: [UserError!]!
}

type WebhookSubscriptionUpdatePayload {
  webhookSubscription: WebhookSubscription
  userErrors: [UserError!]!
}

type WebhookSubscriptionDeletePayload {
  deletedWebhookSubscriptionId: ID
  userErrors: [UserError!]!
}

type BulkOperation implements Node {
  id: ID!
  status: BulkOperationStatus!
  errorCode: BulkOperationErrorCode
  createdAt: DateTime!
  completedAt: DateTime
  objectCount: UnsignedInt64!
  rootObjectCount: UnsignedInt64!
  fileSize: UnsignedInt64
  url: URL
  partialDataUrl: URL
  query: String!
  type: BulkOperationType!
}

type BulkOperationConnection {
  edges: [BulkOperationEdge!]!
  nodes: [BulkOperation!]!
  pageInfo: PageInfo!
}

type BulkOperationEdge {
  cursor: String!
  node: BulkOperation!
}

type BulkOperationUserError {
  field: [String!]
  message: String!
  code: BulkOperationUserErrorCode
}

type UserError {
  field: [String!]
  message: String!
}

type BulkOperationRunQueryPayload {
  bulkOperation: BulkOperation
  userErrors: [BulkOperationUserError!]!
}

type BulkOperationCancelPayload {
  bulkOperation: BulkOperation
  userErrors: [UserError!]!
}

type Shop implements Node {
  id: ID!
  name: String!
  email: String!
  myshopifyDomain: String!
  currencyCode: CurrencyCode!
  ianaTimezone: String!
  plan: ShopPlan!
}

type ShopPlan {
  displayName: String!
  shopifyPlus: Boolean!
}

type AppInstallation {
  accessScopes: [AccessScope!]!
}

type AccessScope {
  handle: String!
}

type Count {
  count: Int!
  precision: CountPrecision!
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

type MoneyV2 {
  amount: Decimal!
  currencyCode: CurrencyCode!
}

type MoneyBag {
  shopMoney: MoneyV2!
  presentmentMoney: MoneyV2!
}

type Order implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  name: String!
  email: String
  createdAt: DateTime!
  updatedAt: DateTime!
  processedAt: DateTime!
  cancelledAt: DateTime
  closedAt: DateTime
  displayFinancialStatus: OrderDisplayFinancialStatus
  displayFulfillmentStatus: OrderDisplayFulfillmentStatus!
  currencyCode: CurrencyCode!
  totalPriceSet: MoneyBag!
  subtotalPriceSet: MoneyBag
  totalTaxSet: MoneyBag
  tags: [String!]!
  note: String
  test: Boolean!
  customer: Customer
  lineItems(first: Int!, after: String): LineItemConnection!
}

type OrderConnection {
  edges: [OrderEdge!]!
  nodes: [Order!]!
  pageInfo: PageInfo!
}

type OrderEdge {
  cursor: String!
  node: Order!
}

type LineItem {
  id: ID!
  name: String!
  title: String!
  quantity: Int!
  sku: String
  variantTitle: String
  originalUnitPriceSet: MoneyBag!
}

type LineItemConnection {
  edges: [LineItemEdge!]!
  nodes: [LineItem!]!
  pageInfo: PageInfo!
}

type LineItemEdge {
  cursor: String!
  node: LineItem!
}

type Product implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  handle: String!
  status: ProductStatus!
  vendor: String!
  productType: String!
  descriptionHtml: String!
  createdAt: DateTime!
  updatedAt: DateTime!
  publishedAt: DateTime
  tags: [String!]!
  variants(first: Int!, after: String): ProductVariantConnection!
}

type ProductConnection {
  edges: [ProductEdge!]!
  nodes: [Product!]!
  pageInfo: PageInfo!
}

type ProductEdge {
  cursor: String!
  node: Product!
}

type ProductVariant {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  sku: String
  price: Money!
  compareAtPrice: Money
  barcode: String
  position: Int!
  inventoryQuantity: Int
  createdAt: DateTime!
  updatedAt: DateTime!
}

type ProductVariantConnection {
  edges: [ProductVariantEdge!]!
  nodes: [ProductVariant!]!
  pageInfo: PageInfo!
}

type ProductVariantEdge {
  cursor: String!
  node: ProductVariant!
}

type Customer implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  email: String
  firstName: String
  lastName: String
  phone: String
  state: CustomerState!
  note: String
  createdAt: DateTime!
  updatedAt: DateTime!
  tags: [String!]!
  addressesV2(first: Int!, after: String): MailingAddressConnection!
}

type CustomerConnection {
  edges: [CustomerEdge!]!
  nodes: [Customer!]!
  pageInfo: PageInfo!
}

type CustomerEdge {
  cursor: String!
  node: Customer!
}

type MailingAddress {
  id: ID!
  firstName: String
  lastName: String
  company: String
  address1: String
  address2: String
  city: String
  province: String
  provinceCode: String
  country: String
  countryCodeV2: String
  zip: String
  phone: String
}

type MailingAddressConnection {
  edges: [MailingAddressEdge!]!
  nodes: [MailingAddress!]!
  pageInfo: PageInfo!
}

type MailingAddressEdge {
  cursor: String!
  node: MailingAddress!
}

type BasicEvent implements Event & Node {
  id: ID!
  action: String!
  createdAt: DateTime!
  message: String!
  subjectType: EventSubjectType!
  subjectId: ID!
}

type EventConnection {
  edges: [EventEdge!]!
  nodes: [Event!]!
  pageInfo: PageInfo!
}

type EventEdge {
  cursor: String!
  node: Event!
}
'''
SCHEMA = build_schema(SCHEMA_SDL)
# What a bulk query is checked and run against: the same types, but connections need no `first` (a bulk
# query reads every item; Shopify's own schema has `first` optional everywhere).
BULK_SCHEMA = build_schema(SCHEMA_SDL.replace("first: Int!", "first: Int"))
MUTATION_COST = 10  # every mutation field, whatever it selects
BULK_FIELDS = ("bulkOperationRunQuery", "bulkOperationCancel", "bulkOperation", "currentBulkOperation",
               "bulkOperations")
WEBHOOK_FIELDS = ("webhookSubscriptionCreate", "webhookSubscriptionUpdate", "webhookSubscriptionDelete",
                  "webhookSubscription", "webhookSubscriptions")



class Cursors:
    """Opaque cursors: base64url JSON with a MAC, so a cursor the client altered is refused."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: dict[str, Any]) -> str:
        message = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:16]

    def encode(self, payload: dict[str, Any]) -> str:
        """The cursor of `payload` (JSON-ready values)."""
        raw = json.dumps({**payload, "sig": self._mac(payload)}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode()

    def decode(self, cursor: str) -> dict[str, Any]:
        """The payload of a cursor; a GraphQLError when it is malformed or was altered."""
        try:
            payload = json.loads(base64.urlsafe_b64decode(cursor.encode() + b"=" * (-len(cursor) % 4)))
            signature = payload.pop("sig")
        except (ValueError, binascii.Error, AttributeError, KeyError, TypeError) as error:
            raise GraphQLError(f"Invalid cursor: {cursor}") from error
        if not isinstance(signature, str) or not hmac.compare_digest(signature, self._mac(payload)):
            raise GraphQLError(f"Invalid cursor: {cursor}")
        return payload

    def page_of(self, cursor: str | None) -> int:
        """The page a request asks for: 1 without a cursor, the cursor's page + 1, 0 if unusable."""
        if not cursor:
            return 1
        try:
            return int(self.decode(cursor)["page"]) + 1
        except (GraphQLError, KeyError, TypeError, ValueError):
            return 0


# -- conversions from REST documents --------------------------------------------------------------------


def gid(type_name: str, id_: int) -> str:
    """Shopify's global id, e.g. gid://shopify/Order/820982911946154508."""
    return f"gid://shopify/{type_name}/{id_}"


def utc_from_us(epoch_us: int) -> str:
    """Epoch microseconds as GraphQL shows them: whole seconds in UTC with Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_us // US))


@functools.lru_cache(maxsize=65_536)
def utc(timestamp: str | None) -> str | None:
    """A REST timestamp with the shop's offset as the same moment in UTC with Z (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromisoformat(timestamp).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def money_bag(money_set: dict[str, dict[str, str]] | None) -> dict[str, Any] | None:
    """A REST `*_set` as GraphQL's MoneyBag."""
    if money_set is None:
        return None
    return {key: {"amount": money_set[rest_key]["amount"], "currencyCode": money_set[rest_key]["currency_code"]}
            for key, rest_key in (("shopMoney", "shop_money"), ("presentmentMoney", "presentment_money"))}


def split_tags(tags: str | None) -> list[str]:
    """REST's comma-separated tags as GraphQL's list."""
    return [tag.strip() for tag in (tags or "").split(",") if tag.strip()]


def line_item_node(item: dict[str, Any]) -> dict[str, Any]:
    """A REST line item as a GraphQL LineItem."""
    return {"id": gid("LineItem", item["id"]), "name": item["name"], "title": item["title"],
            "quantity": item["quantity"], "sku": item["sku"], "variantTitle": item["variant_title"],
            "originalUnitPriceSet": money_bag(item["price_set"])}


def variant_node(variant: dict[str, Any]) -> dict[str, Any]:
    """A REST variant as a GraphQL ProductVariant."""
    return {"id": gid("ProductVariant", variant["id"]), "legacyResourceId": str(variant["id"]),
            "title": variant["title"], "sku": variant["sku"], "price": variant["price"],
            "compareAtPrice": variant["compare_at_price"], "barcode": variant["barcode"],
            "position": variant["position"], "inventoryQuantity": variant["inventory_quantity"],
            "createdAt": utc(variant["created_at"]), "updatedAt": utc(variant["updated_at"])}


def address_node(address: dict[str, Any]) -> dict[str, Any]:
    """A REST customer address as a GraphQL MailingAddress."""
    return {"id": f"gid://shopify/MailingAddress/{address.get('id', 0)}?model_name=CustomerAddress",
            "firstName": address["first_name"], "lastName": address["last_name"], "company": address["company"],
            "address1": address["address1"], "address2": address["address2"], "city": address["city"],
            "province": address["province"], "provinceCode": address["province_code"],
            "country": address["country"], "countryCodeV2": address["country_code"], "zip": address["zip"],
            "phone": address["phone"]}


# GraphQL field → its value computed from the REST document, per type.
ORDER_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda doc: doc["name"],
    "email": lambda doc: doc["email"],
    "processedAt": lambda doc: utc(doc["processed_at"]),
    "cancelledAt": lambda doc: utc(doc["cancelled_at"]),
    "closedAt": lambda doc: utc(doc["closed_at"]),
    "displayFinancialStatus": lambda doc: (doc["financial_status"] or "pending").upper(),
    "displayFulfillmentStatus": lambda doc: FULFILLMENT_STATUSES.get(doc["fulfillment_status"], "UNFULFILLED"),
    "currencyCode": lambda doc: doc["currency"],
    "totalPriceSet": lambda doc: money_bag(doc["total_price_set"]),
    "subtotalPriceSet": lambda doc: money_bag(doc["subtotal_price_set"]),
    "totalTaxSet": lambda doc: money_bag(doc["total_tax_set"]),
    "tags": lambda doc: split_tags(doc["tags"]),
    "note": lambda doc: doc["note"],
    "test": lambda doc: doc["test"],
}
PRODUCT_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "title": lambda doc: doc["title"],
    "handle": lambda doc: doc["handle"],
    "status": lambda doc: doc["status"].upper(),
    "vendor": lambda doc: doc["vendor"],
    "productType": lambda doc: doc["product_type"],
    "descriptionHtml": lambda doc: doc["body_html"],
    "publishedAt": lambda doc: utc(doc["published_at"]),
    "tags": lambda doc: split_tags(doc["tags"]),
}
CUSTOMER_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "email": lambda doc: doc["email"],
    "firstName": lambda doc: doc["first_name"],
    "lastName": lambda doc: doc["last_name"],
    "phone": lambda doc: doc["phone"],
    "state": lambda doc: doc["state"].upper(),
    "note": lambda doc: doc.get("note"),
    "tags": lambda doc: split_tags(doc.get("tags")),
}
# GraphQL connection field → (REST list key, item conversion), per type.
NESTED_CONNECTIONS: dict[str, dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]]] = {
    "Order": {"lineItems": ("line_items", line_item_node)},
    "Product": {"variants": ("variants", variant_node)},
    "Customer": {"addressesV2": ("addresses", address_node)},
}
NODE_FIELDS = {"Order": ORDER_FIELDS, "Product": PRODUCT_FIELDS, "Customer": CUSTOMER_FIELDS}


# -- resolving --------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What resolvers of one request share: the shop, the cursor codec, the REST shop document."""

    shop: ShopRuntime
    cursors: Cursors
    shop_document: dict[str, Any]
    # The root field a "partial" fault fails with INTERNAL_SERVER_ERROR (None: no fault).
    fail_key: str | None = None
    # The version that answers (bulk concurrency and groupObjects depend on it) and the shop's bulk
    # operations (a bulk.ShopBulk; None where no bulk operations are served).
    api_version: str = ""
    bulk: Any = None
    # The shop's webhook subscriptions (a webhooks.ShopWebhooks; None where none are served).
    webhooks: Any = None
    # True inside a bulk query: nested connections hold every item, not one page.
    unpaged: bool = False


def snapshot(record: Record) -> Record:
    """A copy of a record's spec, so it can be rendered after the shop's lock is released."""
    copy = Record(record.id, record.index, record.created, record.updated, record.state, record.size)
    copy.version = record.version
    return copy


class RecordNode:
    """An Order, Product or Customer: id and timestamps from the spec, the rest from its REST document.

    The document is rendered (or taken from the render cache) only when a field needs it. A customer
    embedded in an order has no spec of its own and is built from the order's `customer` block.
    """

    def __init__(self, context: Context, type_name: str, record: Record | None = None,
                 document: dict[str, Any] | None = None) -> None:
        self.context = context
        self.type_name = type_name
        self.record = record
        if document is not None:
            self.__dict__["document"] = document

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        """The REST document of the record at the snapshot's version."""
        assert self.record is not None
        data_type = DATA_TYPES_BY_NAME[self.type_name]
        return json.loads(self.context.shop.data.render_bytes(data_type, self.record))

    def field(self, name: str, args: dict[str, Any]) -> Any:
        """The value of GraphQL field `name`."""
        record = self.record
        if name == "id":
            return gid(self.type_name, record.id if record else self.document["id"])
        if name == "legacyResourceId":
            return str(record.id if record else self.document["id"])
        if name in ("createdAt", "updatedAt"):
            if record is not None:
                return utc_from_us(record.created if name == "createdAt" else record.updated)
            return utc(self.document["created_at" if name == "createdAt" else "updated_at"])
        if name == "customer":
            customer = self.document["customer"]
            return RecordNode(self.context, "Customer", document=customer) if customer else None
        nested = NESTED_CONNECTIONS[self.type_name].get(name)
        if nested is not None:
            rest_key, convert = nested
            items = self.document.get(rest_key)
            if items is None and rest_key == "addresses":
                items = [self.document["default_address"]] if self.document.get("default_address") else []
            if self.context.unpaged:
                return connection([convert(item) for item in items or []], [str] * len(items or []), False, False)
            return position_connection(self.context.cursors, items or [], convert, args)
        value = NODE_FIELDS[self.type_name].get(name)
        return value(self.document) if value is not None else None


def page_size(args: dict[str, Any], name: str = "first") -> int:
    """`first` (or `last`, by `name`), checked against Shopify's bounds."""
    size = args[name]
    if not 0 <= size <= MAX_PAGE_SIZE:
        raise GraphQLError(f"The page size `{name}` must be between 0 and {MAX_PAGE_SIZE}, got {size}.")
    return size


def connection(nodes: list[Any], cursors: list[Callable[[], str]], has_next: bool,
               has_previous: bool) -> dict[str, Any]:
    """A connection with edges, nodes and pageInfo; cursors are computed only if asked for."""
    return {
        "edges": [{"cursor": cursor, "node": node} for cursor, node in zip(cursors, nodes, strict=True)],
        "nodes": nodes,
        "pageInfo": {"hasNextPage": has_next, "hasPreviousPage": has_previous,
                     "startCursor": cursors[0] if cursors else None,
                     "endCursor": cursors[-1] if cursors else None},
    }


def position_connection(cursors: Cursors, items: list[dict[str, Any]],
                        convert: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    """A page of a nested list (line items, variants, addresses), paged by position."""
    first = page_size(args)
    start, page = 0, 1
    if args.get("after"):
        payload = cursors.decode(args["after"])
        start, page = int(payload.get("o", 0)), int(payload.get("page", 0)) + 1
    chunk = items[start:start + first]
    edge_cursors = [functools.partial(cursors.encode, {"o": start + offset + 1, "page": page})
                    for offset in range(len(chunk))]
    return connection([convert(item) for item in chunk], edge_cursors, start + first < len(items), start > 0)


def access_denied(field_name: str, scope: str) -> GraphQLError:
    """Shopify's error for a field the token's scopes do not cover."""
    required = f"`{scope}` access scope."
    return GraphQLError(f"Access denied for {field_name} field. Required access: {required}",
                        extensions={"code": "ACCESS_DENIED", "documentation": ACCESS_SCOPES_DOCUMENTATION,
                                    "requiredAccess": required})


def parse_search_time(value: str, local: timezone) -> int:
    """An ISO-8601 search value as epoch seconds; without an offset it is read in the shop's zone."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise GraphQLError(f"Invalid date in search query: {value!r}") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=local)
    return int(moment.timestamp() // 1)


def compare(op: str, low: int, high: int) -> Callable[[int], bool]:
    """A test of a value against the range [low, high) that one visible value (a second, an id) covers."""
    tests: dict[str, Callable[[int], bool]] = {
        ">=": lambda value: value >= low,
        ">": lambda value: value >= high,
        "<": lambda value: value < low,
        "<=": lambda value: value < high,
        "=": lambda value: low <= value < high,
    }
    return tests[op]


def term_check(data_type: str, name: str, op: str, value: str, local: timezone) -> Callable[[Any], bool] | None:
    """The predicate of one search term, or None for a field this type does not filter on."""
    if name in ("created_at", "updated_at", "processed_at"):
        attribute = "updated" if name == "updated_at" else "created"
        second = parse_search_time(value, local)
        test = compare(op, second * US, (second + 1) * US)
        return lambda item: test(getattr(item, attribute))
    if name == "id":
        digits = value.rsplit("/", 1)[-1]
        number = int(digits) if digits.isdigit() else -1
        test = compare(op, number, number + 1)
        return lambda item: test(item.id)
    if name in ("status", "state") and data_type != "events":
        return lambda item: item.state == value.lower()
    if name == "action" and data_type == "events":
        return lambda item: item.verb == value.lower()
    if name == "subject_type" and data_type == "events":
        return lambda item: item.subject_type.upper() == value.upper()
    return None


def search_filter(data_type: str, query: str | None, local: timezone) -> Callable[[Any], bool]:
    """A predicate for Shopify's search syntax (the subset: terms joined by spaces or AND).

    Timestamps (`created_at`, `updated_at`, `processed_at`) compare at whole-second precision as shown,
    `id` compares numbers, `status`/`state` match the record's state; for events `action` and
    `subject_type`. Unknown fields are ignored, as Shopify ignores them; OR, NOT and free text are refused.
    """
    checks = [check for name, op, value in search_terms(query)
              if (check := term_check(data_type, name, op, value, local)) is not None]
    return lambda item: all(check(item) for check in checks)


def search_terms(query: str | None) -> list[tuple[str, str, str]]:
    """The (field, operator, unquoted value) of each term of a search `query`, terms joined by spaces or AND;
    a GraphQLError for OR, NOT, negation and free text, which the simulator does not support."""
    terms = []
    for token in SEARCH_TOKEN.findall(query or ""):
        if token.upper() == "AND":
            continue
        term = SEARCH_TERM.match(token)
        if term is None or token.upper() in ("OR", "NOT") or token.startswith("-"):
            raise GraphQLError(f"The simulator's search supports only field:value terms joined by AND, "
                               f"not {token!r}")
        terms.append((term["field"], term["op"] or "=", term["value"].strip("'\"")))
    return terms


def event_node(event: Event) -> dict[str, Any]:
    """A deletion event as a BasicEvent."""
    return {"__typename": "BasicEvent", "id": gid("BasicEvent", event.id), "action": event.verb,
            "createdAt": utc_from_us(event.created), "message": f"{event.subject_type} {event.name} was deleted.",
            "subjectType": event.subject_type.upper(), "subjectId": gid(event.subject_type, event.subject_id)}


class QueryRoot:
    """The root fields: shop, access scopes, the three listings, their counts, events and node."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.shop = context.shop

    def field(self, name: str, args: dict[str, Any]) -> Any:
        """The value of root field `name`."""
        if name == "shop":
            return self._shop()
        if name == "currentAppInstallation":
            return {"accessScopes": [{"handle": scope} for scope in self.shop.scopes]}
        if name in SCOPES_NEEDED:
            self._require(name, name)
            return self._listing(name, args)
        if name == "events":
            return self._listing("events", args)
        if name.endswith("Count"):
            data_type = name.removesuffix("Count")
            self._require(name, data_type)
            return self._count(data_type, args)
        if name == "node":
            return self._node(args["id"])
        if name in BULK_FIELDS:
            return self._bulk(name, args)
        if name in WEBHOOK_FIELDS:
            return self._webhooks(name, args)
        return None

    def _webhooks(self, name: str, args: dict[str, Any]) -> Any:
        webhooks = self.context.webhooks
        if webhooks is None:
            raise GraphQLError(f"{name} is not served here.")
        if name == "webhookSubscriptionCreate":
            return webhooks.graphql_create(args, self.context.api_version)
        if name == "webhookSubscriptionUpdate":
            return webhooks.graphql_update(args)
        if name == "webhookSubscriptionDelete":
            return webhooks.graphql_delete(args)
        if name == "webhookSubscription":
            return webhooks.graphql_find(args["id"])
        return webhooks.graphql_listing(args)

    def _bulk(self, name: str, args: dict[str, Any]) -> Any:
        bulk = self.context.bulk
        if bulk is None:
            raise GraphQLError(f"{name} is not served here.")
        if name == "bulkOperationRunQuery":
            return bulk.run_query(args["query"], args.get("groupObjects"), self.context.api_version, self.shop.scopes)
        if name == "bulkOperationCancel":
            return bulk.cancel(args["id"])
        if name == "bulkOperation":
            return bulk.find(args["id"])
        if name == "bulkOperations":
            return bulk.listing(args)
        return bulk.current() if args.get("type", "QUERY") == "QUERY" else None

    def _require(self, field_name: str, data_type: str) -> None:
        scope = SCOPES_NEEDED[data_type]
        if scope not in self.shop.scopes:
            raise access_denied(field_name, scope)

    def _shop(self) -> dict[str, Any]:
        rest = self.context.shop_document
        return {"id": gid("Shop", rest["id"]), "name": rest["name"], "email": rest["email"],
                "myshopifyDomain": rest["myshopify_domain"], "currencyCode": rest["currency"],
                "ianaTimezone": rest["iana_timezone"],
                "plan": {"displayName": rest["plan_display_name"],
                         "shopifyPlus": rest["plan_name"] in ("plus", "enterprise")}}

    def visible(self, data_type: str, query: str | None) -> Callable[[Any], bool]:
        """A predicate for the records of `data_type` this token sees that match the search `query`."""
        matches = search_filter(data_type, query, self.shop.data.renderer.tz)
        if data_type == "orders" and "read_all_orders" not in self.shop.scopes:
            # Without read_all_orders only the last 60 days of orders are visible, as on REST.
            oldest = sixty_days_ago(time.time()) * US
            return lambda item: item.created >= oldest and matches(item)
        return matches

    def _listing(self, data_type: str, args: dict[str, Any]) -> dict[str, Any]:
        first = page_size(args)
        sort_key, reverse = args.get("sortKey") or "ID", bool(args.get("reverse"))
        order = (SORT_FIELDS[sort_key], "desc" if reverse else "asc")
        cursor, page = None, 1
        if args.get("after"):
            payload = self.context.cursors.decode(args["after"])
            if payload.get("sort") != [sort_key, reverse]:
                raise GraphQLError("Invalid cursor for current pagination sort.")
            cursor, page = (int(payload["v"]), int(payload["i"])), int(payload["page"]) + 1
        request = ListRequest(filters={}, order=order, limit=first, cursor=cursor, page=page)
        matches = self.visible(data_type, args.get("query"))
        data = self.shop.data
        collection = data.events if data_type == "events" else data.collections[data_type]
        attribute = SORT_ATTRIBUTES[order[0]]
        with data.lock:
            found, more = collection.page(request, matches)
            # Cursors and nodes from the specs as served: a record may change once the lock is released.
            keys = [(getattr(item, attribute), item.id) for item in found]
            if data_type == "events":
                nodes: list[Any] = [event_node(event) for event in found]
            else:
                nodes = [RecordNode(self.context, TYPE_NAMES[data_type], snapshot(item)) for item in found]
        encode = self.context.cursors.encode
        cursors = [functools.partial(encode, {"sort": [sort_key, reverse], "v": value, "i": id_, "page": page})
                   for value, id_ in keys]
        return connection(nodes, cursors, more, cursor is not None)

    def _count(self, data_type: str, args: dict[str, Any]) -> dict[str, Any]:
        matches = self.visible(data_type, args.get("query"))
        data = self.shop.data
        with data.lock:
            count = data.collections[data_type].count(matches)
        limit = args.get("limit")
        if limit is not None and count > limit:
            return {"count": limit, "precision": "AT_LEAST"}
        return {"count": count, "precision": "EXACT"}

    def _node(self, global_id: str) -> RecordNode | None:
        match = GID.match(global_id)
        data_type = DATA_TYPES_BY_NAME.get(match["type"]) if match else None
        if match is None or data_type is None:
            return None
        self._require("node", data_type)
        matches = self.visible(data_type, None)
        data = self.shop.data
        with data.lock:
            record = data.collections[data_type].by_id.get(int(match["id"]))
            if record is None or record.deleted or not matches(record):
                return None
            return RecordNode(self.context, match["type"], snapshot(record))


def resolve_field(source: Any, info: Any, **args: Any) -> Any:
    """graphql-core's field resolver: dicts by key (callables are called), objects by their `field`."""
    if isinstance(source, dict):
        value = source.get(info.field_name)
        return value() if callable(value) else value
    if isinstance(source, QueryRoot) and info.path.key == source.context.fail_key:
        request_id = str(uuid.uuid4())
        raise GraphQLError(f"Internal error. Looks like something went wrong on our end.\nRequest ID: "
                           f"{request_id} (include this in support requests).",
                           extensions={"code": "INTERNAL_SERVER_ERROR", "requestId": request_id})
    return source.field(info.field_name, args)


def resolve_type(value: Any, info: Any, abstract_type: Any) -> str:
    """The concrete type of a Node or Event value."""
    return value["__typename"] if isinstance(value, dict) else value.type_name


# -- query cost -------------------------------------------------------------------------------------------


@dataclass
class CostNode:
    """One selected field as cost sees it: a leaf, an object with fields, a connection of items, or the
    operation's root (free itself)."""

    kind: str  # leaf, object, connection, root, or mutation (a mutation field: MUTATION_COST flat)
    first: int = 0
    children: dict[str, CostNode] = field(default_factory=dict)
    # Response keys of a connection's `nodes`, `edges` and `edges { node }` selections.
    nodes_key: str | None = None
    edges_key: str | None = None
    node_key: str | None = None

    def requested(self) -> int:
        """Shopify's requested cost: objects 1, connections 2 + first + first × the cost of one item."""
        inner = sum(child.requested() for child in self.children.values())
        if self.kind == "leaf":
            return 0
        if self.kind == "mutation":
            return MUTATION_COST
        if self.kind == "root":
            return inner
        if self.kind == "connection":
            return CONNECTION_COST + self.first + self.first * inner
        return OBJECT_COST + inner

    def actual(self, value: Any) -> int:
        """The same rule applied to what was returned: connections count the items they hold."""
        if self.kind == "mutation":
            return MUTATION_COST
        if self.kind == "leaf" or value is None:
            return 0
        if self.kind == "root":
            return self._inner(value)
        if self.kind == "connection":
            items = self._items(value)
            return CONNECTION_COST + len(items) + sum(self._inner(item) for item in items)
        if isinstance(value, list):
            return OBJECT_COST + max((self._inner(item) for item in value), default=0)
        return OBJECT_COST + self._inner(value)

    def _inner(self, value: Any) -> int:
        if not isinstance(value, dict):
            return 0
        return sum(child.actual(value.get(key)) for key, child in self.children.items())

    def _items(self, value: dict[str, Any]) -> list[Any]:
        if self.nodes_key and isinstance(value.get(self.nodes_key), list):
            return value[self.nodes_key]
        if self.edges_key and self.node_key and isinstance(value.get(self.edges_key), list):
            return [edge.get(self.node_key) for edge in value[self.edges_key] if isinstance(edge, dict)]
        return []


class CostPlanner:
    """Builds the CostNode tree of an operation from its AST, fragments and variables."""

    def __init__(self, document: DocumentNode, variables: dict[str, Any] | None) -> None:
        self.variables = variables or {}
        self.fragments = {definition.name.value: definition for definition in document.definitions
                          if isinstance(definition, FragmentDefinitionNode)}

    def root(self, operation: OperationDefinitionNode) -> CostNode:
        """The tree of the operation; the root object itself costs nothing, a mutation field MUTATION_COST."""
        if operation.operation == OperationType.MUTATION:
            fields = self.collect(operation.selection_set, SCHEMA.mutation_type, {})
            return CostNode("root", children={key: CostNode("mutation") for key in fields})
        fields = self.collect(operation.selection_set, SCHEMA.query_type, {})
        return CostNode("root", children={key: self._build(entries) for key, entries in fields.items()})

    def collect(self, selection_set: SelectionSetNode | None, parent: Any,
                 fields: dict[str, list[tuple[FieldNode, Any]]]) -> dict[str, list[tuple[FieldNode, Any]]]:
        """Selected fields by response key, each with the type it is selected on (fragments expanded)."""
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, []).append((selection, parent))
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                self.collect(selection.selection_set,
                              SCHEMA.get_type(condition.name.value) if condition else parent, fields)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value in self.fragments:
                fragment = self.fragments[selection.name.value]
                self.collect(fragment.selection_set, SCHEMA.get_type(fragment.type_condition.name.value), fields)
        return fields

    def _sub_fields(self, entries: list[tuple[FieldNode, Any]], named: GraphQLNamedType) -> dict[str, list]:
        fields: dict[str, list[tuple[FieldNode, Any]]] = {}
        for node, _ in entries:
            self.collect(node.selection_set, named, fields)
        return fields

    def _build(self, entries: list[tuple[FieldNode, Any]]) -> CostNode:
        node, parent = entries[0]
        definition = getattr(parent, "fields", {}).get(node.name.value)
        if definition is None:
            return CostNode("leaf")  # __typename and other introspection
        named = get_named_type(definition.type)
        if is_leaf_type(named):
            return CostNode("leaf")
        sub_fields = self._sub_fields(entries, named)
        if not named.name.endswith("Connection"):
            return CostNode("object", children={key: self._build(found) for key, found in sub_fields.items()})
        item_type = get_named_type(named.fields["nodes"].type)
        items: dict[str, list[tuple[FieldNode, Any]]] = {}
        cost = CostNode("connection", first=self._first(node))
        for key, found in sub_fields.items():
            name = found[0][0].name.value
            if name == "nodes":
                cost.nodes_key = key
                for nodes_field, _ in found:
                    self.collect(nodes_field.selection_set, item_type, items)
            elif name == "edges":
                cost.edges_key = key
                edge_type = get_named_type(named.fields["edges"].type)
                for edge_key, edge_fields in self._sub_fields(found, edge_type).items():
                    if edge_fields[0][0].name.value == "node":
                        cost.node_key = edge_key
                        for node_field, _ in edge_fields:
                            self.collect(node_field.selection_set, item_type, items)
        cost.children = {key: self._build(found) for key, found in items.items()}
        return cost

    def _first(self, node: FieldNode) -> int:
        """The objects a connection asks for: `first`, or `last` when it pages backwards."""
        sizes = [value_from_ast(argument.value, GraphQLInt, self.variables) for argument in node.arguments
                 if argument.name.value in ("first", "last")]
        return max((max(size, 0) for size in sizes if isinstance(size, int)), default=0)


# -- one request ------------------------------------------------------------------------------------------


@dataclass
class GraphQLRequest:
    """A request body, parsed: what fault rules and the executor need, or why it cannot run."""

    query: str = ""
    variables: dict[str, Any] | None = None
    operation_name: str | None = None
    document: DocumentNode | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, body: bytes, content_type: str) -> GraphQLRequest:
        """Parse a JSON body ({"query", "variables", "operationName"}) or an application/graphql one."""
        if content_type.split(";")[0].strip() == "application/graphql":
            request = cls(query=body.decode("utf-8", "replace"))
        else:
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                return cls(errors=[{"message": "Invalid JSON in request body."}])
            if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
                return cls(errors=[{"message": "No query string was present"}])
            variables = payload.get("variables")
            request = cls(query=payload["query"], variables=variables if isinstance(variables, dict) else None,
                          operation_name=payload.get("operationName") or None)
        try:
            request.document = parse(request.query)
        except GraphQLSyntaxError as error:
            request.errors = [error.formatted]
        return request

    def operation(self) -> OperationDefinitionNode | None:
        return get_operation_ast(self.document, self.operation_name) if self.document else None

    def _root_fields(self) -> list[FieldNode]:
        operation = self.operation()
        if operation is None:
            return []
        return [selection for selection in operation.selection_set.selections if isinstance(selection, FieldNode)]

    def fault_keys(self, cursors: Cursors) -> tuple[tuple[str, ...], int, int]:
        """(endpoint aliases "graphql:<root field>", page asked for, largest `first`) for fault rules."""
        aliases, page, limit = [], 1, 0
        for root in self._root_fields():
            aliases.append(f"graphql:{root.name.value}")
            for argument in root.arguments:
                if argument.name.value == "after":
                    after = value_from_ast(argument.value, GraphQLString, self.variables or {})
                    page = max(page, cursors.page_of(after)) if isinstance(after, str) else page
                elif argument.name.value == "first":
                    first = value_from_ast(argument.value, GraphQLInt, self.variables or {})
                    limit = max(limit, first) if isinstance(first, int) else limit
        return tuple(aliases), page, limit or 50

    def partial_fault_key(self) -> str | None:
        """The root field a "partial" fault fails: the first that may be null, so the rest survives."""
        roots = self._root_fields()
        for root in roots:
            definition = SCHEMA.query_type.fields.get(root.name.value)
            if definition is not None and not is_non_null_type(definition.type):
                return root.alias.value if root.alias else root.name.value
        return None


def cost_extension(requested: int, actual: int | None, bucket: CostBucket) -> dict[str, Any]:
    """`extensions.cost` as Shopify sends it."""
    return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                     "throttleStatus": bucket.status()}}


def respond(request: GraphQLRequest, context: Context, bucket: CostBucket, fault: str | None) -> tuple[dict, bool]:
    """The response document of one request and whether it was THROTTLED (both are HTTP 200).

    Syntax and validation errors cost nothing; a query over MAX_QUERY_COST is refused; otherwise the
    requested cost is taken from `bucket` (THROTTLED if it holds less), the query runs, and the difference
    to the actual cost is refunded. Fault "throttled" answers THROTTLED whatever the bucket holds;
    "partial" fails one nullable root field with INTERNAL_SERVER_ERROR.
    """
    if request.errors or request.document is None:
        return {"errors": request.errors, "extensions": cost_extension(0, 0, bucket)}, False
    errors = validate(SCHEMA, request.document)
    operation = request.operation()
    if not errors and operation is None:
        errors = [GraphQLError("An operation name is required when a document holds several operations.")]
    if errors:
        return {"errors": [error.formatted for error in errors], "extensions": cost_extension(0, 0, bucket)}, False
    assert operation is not None
    plan = CostPlanner(request.document, request.variables).root(operation)
    requested = plan.requested()
    if requested > MAX_QUERY_COST:
        message = (f"Query cost is {requested}, which exceeds the single query max cost limit ({MAX_QUERY_COST}).\n\n"
                   f"See {RATE_LIMITS_DOCUMENTATION} for more information on how the cost of a query is calculated."
                   "\n\nTo query larger amounts of data with fewer limits, bulk operations should be used instead.")
        error = {"message": message, "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested,
                                                    "maxCost": MAX_QUERY_COST,
                                                    "documentation": RATE_LIMITS_DOCUMENTATION}}
        return {"errors": [error], "extensions": cost_extension(requested, None, bucket)}, False
    if fault == "throttled" or not bucket.take(requested):
        error = {"message": "Throttled",
                 "extensions": {"code": "THROTTLED", "documentation": RATE_LIMITS_DOCUMENTATION}}
        return {"errors": [error], "extensions": cost_extension(requested, None, bucket)}, True
    if fault == "partial":
        context.fail_key = request.partial_fault_key()
    result = execute_sync(SCHEMA, request.document, root_value=QueryRoot(context), context_value=context,
                          variable_values=request.variables, operation_name=request.operation_name,
                          field_resolver=resolve_field, type_resolver=resolve_type)
    actual = min(plan.actual(result.data), requested)
    bucket.refund(requested - actual)
    document: dict[str, Any] = {}
    if result.errors:
        document["errors"] = [error.formatted for error in result.errors]
    if result.data is not None or not result.errors:
        document["data"] = result.data
    document["extensions"] = cost_extension(requested, actual, bucket)
    return document, False
