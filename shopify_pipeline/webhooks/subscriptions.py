"""`shopify-pipeline webhooks subscribe`: the shop's webhook subscriptions for our topics, made idempotently
with GraphQL (`webhookSubscriptionCreate`). The address is an HTTPS URL (our webhook endpoint: a Lambda
function URL or API Gateway) or an Amazon EventBridge event source ARN. The mandatory compliance topics are
not subscribed here: they are set in the app's configuration (`shopify.app.toml` `[webhooks] compliance`).
"""

from __future__ import annotations

from shopify_pipeline.shopify.client import UnexpectedAnswerError
from shopify_pipeline.shopify.errors import BadRequestError
from shopify_pipeline.shopify.graphql import GraphQLClient

# Our topics as GraphQL's WebhookSubscriptionTopic names.
TOPICS = ("ORDERS_CREATE", "ORDERS_UPDATED", "ORDERS_DELETE", "PRODUCTS_CREATE", "PRODUCTS_UPDATE",
          "PRODUCTS_DELETE", "CUSTOMERS_CREATE", "CUSTOMERS_UPDATE", "CUSTOMERS_DELETE", "APP_UNINSTALLED",
          "BULK_OPERATIONS_FINISH")
LIST = ("query Subscriptions($first: Int!, $after: String) { webhookSubscriptions(first: $first, after: $after) "
        "{ nodes { id topic uri } pageInfo { hasNextPage endCursor } } }")
CREATE = ("mutation Subscribe($topic: WebhookSubscriptionTopic!, $uri: String!) { webhookSubscriptionCreate("
          "topic: $topic, webhookSubscription: {uri: $uri, format: JSON}) { webhookSubscription { id topic uri } "
          "userErrors { field message } } }")
TAKEN = "already been taken"


def check_address(address: str) -> str:
    """An HTTPS URL or an EventBridge ARN; anything else is refused before Shopify is asked."""
    if address.startswith("https://") or address.startswith("arn:aws:events:"):
        return address
    if address.startswith("http://127.0.0.1") or address.startswith("http://localhost"):
        return address  # the simulator delivers to local test servers
    raise BadRequestError(f"{address!r} is not a webhook address Shopify delivers to: use an https:// URL or an "
                          "EventBridge event source ARN (arn:aws:events:…)")


def subscribe(graphql: GraphQLClient, address: str) -> dict[str, list[str]]:
    """Subscribe `address` to every topic of ours it is not subscribed to yet. Returns the topics
    {"created": […], "existing": […]}; running it again creates nothing."""
    check_address(address)
    existing = {node.get("topic") for nodes, _ in graphql.connection_pages(LIST, "webhookSubscriptions", first=100)
                for node in nodes if node.get("uri") == address}
    outcome: dict[str, list[str]] = {"created": [], "existing": sorted(t for t in existing if t in TOPICS)}
    for topic in TOPICS:
        if topic in existing:
            continue
        payload = graphql.execute(CREATE, {"topic": topic, "uri": address}).data.get("webhookSubscriptionCreate")
        if not isinstance(payload, dict):
            raise UnexpectedAnswerError("Shopify's answer to webhookSubscriptionCreate has no payload")
        errors = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in payload.get("userErrors") or []]
        if errors and all(TAKEN in e for e in errors):
            outcome["existing"].append(topic)  # made meanwhile by another run: that is the same thing
            continue
        if errors:
            raise BadRequestError(f"Shopify refused the {topic} subscription: {'; '.join(errors)[:300]}")
        outcome["created"].append(topic)
    return outcome
