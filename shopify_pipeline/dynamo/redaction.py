"""Redactions that stay redacted (issue #15, `customers/redact`).

A redacted customer's record is deleted and the personal fields of their orders are blanked; a permanent
marker per customer and per order (`redacted_{type}_{id}` in `sync_checkpoints`, no TTL) remembers it, so
that nothing brings the data back: a webhook's document is blanked (an order) or refused (the customer)
before it is stored, and every load of a sync applies the markers again at its end (`reapply`), because
Shopify may still serve the data to a sync for a while. `shop/redact` deletes the markers with everything
else of the shop.
"""

from __future__ import annotations

from shopify_pipeline.dynamo.client import translate_errors
from shopify_pipeline.dynamo.codec import REST, shape_of
from shopify_pipeline.settings import Settings

# What of an order identifies its customer, per stored shape: set to null. Lists name fields inside each item.
ORDER_PERSONAL_FIELDS = {
    REST: ("email", "contact_email", "phone", "customer", "billing_address", "shipping_address", "browser_ip",
           "client_details", "note", "note_attributes", "customer_locale", "order_status_url", "token",
           "cart_token", "checkout_token", "landing_site", "landing_site_ref", "referring_site"),
    "graphql": ("email", "phone", "customer", "billingAddress", "shippingAddress", "note"),
}
ORDER_PERSONAL_ITEM_FIELDS = {
    REST: {"line_items": ("properties",), "shipping_lines": ("phone",), "refunds": ("note",)},
    "graphql": {},
}


def redact_order(document: dict) -> dict:
    """`document` with its personal fields set to null (a copy)."""
    shape = shape_of(document)
    redacted = dict(document)
    for name in ORDER_PERSONAL_FIELDS[shape]:
        if name in redacted:
            redacted[name] = None
    for name, inner in ORDER_PERSONAL_ITEM_FIELDS[shape].items():
        if isinstance(redacted.get(name), list):
            redacted[name] = [{**item, **{f: None for f in inner if f in item}} if isinstance(item, dict) else item
                              for item in redacted[name]]
    return redacted


class Redactions:
    """The redaction markers of every user (see the module doc)."""

    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._table = settings.tables.checkpoints

    def mark(self, user_id: str, data_type: str, record_ids: list[int], at: str) -> None:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            for record_id in record_ids:
                self._client.put_item(TableName=self._table, Item={
                    "userId": {"S": user_id}, "syncType": {"S": f"redacted_{data_type}_{int(record_id)}"},
                    "redactedAt": {"S": at}})

    def marked(self, user_id: str, data_type: str) -> set[int]:
        """The ids of `data_type` redacted for this user."""
        prefix = f"redacted_{data_type}_"
        kwargs = {"TableName": self._table, "ConsistentRead": True, "ProjectionExpression": "syncType",
                  "KeyConditionExpression": "userId = :u AND begins_with(syncType, :p)",
                  "ExpressionAttributeValues": {":u": {"S": user_id}, ":p": {"S": prefix}}}
        found: set[int] = set()
        while True:
            with translate_errors(self._table, self._client.meta.endpoint_url):
                page = self._client.query(**kwargs)
            found.update(int(item["syncType"]["S"].removeprefix(prefix)) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def is_marked(self, user_id: str, data_type: str, record_id: int) -> bool:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            return "Item" in self._client.get_item(
                TableName=self._table, ConsistentRead=True, ProjectionExpression="userId",
                Key={"userId": {"S": user_id}, "syncType": {"S": f"redacted_{data_type}_{int(record_id)}"}})

    def applied(self, user_id: str, data_type: str, document: dict, record_id: int) -> dict | None:
        """`document` as it may be stored: None for a redacted customer, blanked for a redacted order."""
        if data_type not in ("customers", "orders") or not self.is_marked(user_id, data_type, record_id):
            return document
        return None if data_type == "customers" else redact_order(document)

    def reapply(self, records, writer, user_id: str, data_type: str) -> int:
        """After a sync's load: delete redacted customers and blank redacted orders it stored again. `records`
        is the data type's RecordTable, `writer` the BatchWriter. Returns how many records it changed."""
        if data_type not in ("customers", "orders"):
            return 0
        ids = sorted(self.marked(user_id, data_type))
        if data_type == "customers":
            present = [i for i in ids if records.get(user_id, i) is not None]
            if present:
                writer.delete_records(user_id, data_type, present)
            return len(present)
        changed = []
        for record_id in ids:
            document = records.get(user_id, record_id)
            if document is not None and redact_order(document) != document:
                changed.append(redact_order(document))
        if changed:
            report = writer.write_records(user_id, data_type, changed)
            if report.failed_batches:
                raise RuntimeError(f"{len(changed)} redacted orders of {user_id} could not be written again")
        return len(changed)
