"""Seeded data: a compact spec per record, rendered on demand into Shopify-shaped REST documents.

Only the spec (`Record`: id, timestamps, state, version, size) lives in memory, so 100 000 orders cost a
few MB; the full document (16 KB to several hundred KB) is rebuilt from the seed, the record's ordinal
and its version whenever it is served. The same inputs always give the same document.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

# Ids above 2^53 like Shopify's documentation example, so a float anywhere in a client breaks them.
ID_BASES = {
    "orders": 820_982_911_946_154_508,
    "products": 6_632_910_392_000_000_000,
    "customers": 5_207_119_551_000_000_000,
    "events": 1_164_748_390_000_000_000,
}
ID_STEP = 1024
LINE_ITEM_ID_BASE = 1_466_157_049_000_000_000
VARIANT_ID_BASE = 3_947_372_213_000_000_000
# Variants past the 15th (large products only) get ids from a separate range, clear of index * 16 + position.
LARGE_VARIANT_ID_BASE = VARIANT_ID_BASE + 10**12
LARGE_VARIANT_ID_STEP = 100_000

FIRST_NAMES = ("Zoë", "José", "Łukasz", "Søren", "Ngọc", "美咲", "Olúwaṣeun", "Ana", "Björn", "François",
               "Jürgen", "Siobhán", "Émile", "Mária", "Çağla", "Bob", "Alice", "Дмитрий", "Αθηνά", "O'Neil")
LAST_NAMES = ("Müller", "García", "Nguyễn", "山田", "Kowalski", "O'Brien", "Smith", "Ångström", "Dupont",
              "Ivanova", "Rossi", "Øvergård", "Núñez", "Papadopoulos", "Lee", "Bishop")
# city, province, province code, country, country code, zip, latitude, longitude
CITIES = (
    ("Ottawa", "Ontario", "ON", "Canada", "CA", "K2P 1L4", 45.4215296, -75.6971931),
    ("New York", "New York", "NY", "United States", "US", "10001", 40.7127753, -74.0059728),
    ("Montréal", "Quebec", "QC", "Canada", "CA", "H2Y 1C6", 45.5018869, -73.5673919),
    ("São Paulo", "São Paulo", "SP", "Brazil", "BR", "01310-100", -23.5557714, -46.6395571),
    ("Zürich", "Zürich", "ZH", "Switzerland", "CH", "8001", 47.3768866, 8.541694),
    ("Berlin", "Berlin", "BE", "Germany", "DE", "10115", 52.5200066, 13.404954),
    ("東京", "Tokyo", "13", "Japan", "JP", "100-0001", 35.6761919, 139.6503106),
)
PRODUCT_WORDS = ("IPod Nano", "Sérum", "Café Crème", "Snowboard", "T-shirt", "Hoodie", "Teapot 茶",
                 "Backpack", "Sneaker", "Lamp", "Notebook", "Headphones", "Mug ☕", "Jacket")
COLORS = ("Pink", "Red", "Green", "Black", "Blanc cassé", "Blue")
TAGS = ("vip", "wholesale", "Älterer Kunde", "repeat", "gift 🎁", "b2b", "newsletter")
NOTES = (None, None, None, "Leave at the door", "Geschenkverpackung bitte ✨", "Call before delivery")


US = 1_000_000


class Record:
    """The in-memory spec of one record; everything else in its document follows from these fields.

    `created` and `updated` are epoch microseconds: documents show whole seconds, but sorting on the
    finer value lets every change land after every earlier one, so keyset paging never skips a record
    updated in the same second as the cursor.
    """

    __slots__ = ("id", "index", "created", "updated", "state", "size", "version", "deleted")

    def __init__(self, id_: int, index: int, created: int, updated: int, state: str, size: int) -> None:
        self.id = id_
        self.index = index
        self.created = created
        self.updated = updated
        self.state = state
        self.size = size
        self.version = 0
        self.deleted = False


def record_id(data_type: str, index: int) -> int:
    """The id of the `index`-th record of a type: increasing with index, irregular gaps, above 2^53."""
    return ID_BASES[data_type] + index * ID_STEP + (index * 2_654_435_761) % (ID_STEP // 2)


def initial_state(data_type: str, rng: random.Random) -> str:
    """A state drawn with realistic odds: most orders are closed or open, some cancelled."""
    roll = rng.random()
    if data_type == "orders":
        return "open" if roll < 0.55 else "closed" if roll < 0.9 else "cancelled"
    if data_type == "products":
        return "active" if roll < 0.8 else "draft" if roll < 0.9 else "archived"
    return "enabled" if roll < 0.7 else "disabled" if roll < 0.95 else "invited"


def record_size(data_type: str, index: int, rng: random.Random, large_every: int, large_size: int) -> int:
    """Line items of an order or variants of a product; every `large_every`-th record is a large one."""
    if data_type != "customers" and large_every and (index + 1) % large_every == 0:
        return large_size
    return pick(rng, (1, 1, 2, 2, 3, 3, 4, 5))


def generate(data_type: str, count: int, seed: int, anchor: int, history_days: int,
             large_every: int = 0, large_size: int = 300) -> list[Record]:
    """`count` record specs, sorted by id, created over `history_days` before `anchor` (epoch seconds).

    About 8% share their created_at second with the previous record, so clients meet same-second
    siblings; updated_at is never later than the anchor.
    """
    rng = random.Random(f"{seed}:{data_type}")
    span = history_days * 86_400
    mean_gap = span / max(count, 1)
    times = []
    t = 0.0
    for _ in range(count):
        if rng.random() >= 0.08:
            t += rng.random() * 2 * mean_gap
        times.append(t)
    # Scale so the last record lands just before the anchor, whatever the draws were.
    scale = (span - 60) / times[-1] if times and times[-1] > 0 else 1.0
    start = anchor - span
    records = []
    for index, offset in enumerate(times):
        created = int(start + offset * scale)
        updated = created if rng.random() < 0.4 else min(anchor, created + between(rng, 1, 30 * 86_400))
        created, updated = created * US, updated * US
        state = initial_state(data_type, rng)
        size = record_size(data_type, index, rng, large_every, large_size)
        records.append(Record(record_id(data_type, index), index, created, updated, state, size))
    return records


class Renderer:
    """Turns a `Record` into the Shopify REST document of a shop (a dict with exact integer ids).

    `variant_count(product_index)` is how many variants that product has (0 if it does not exist), so
    line items point at variants that exist; without it, line items pick positions 1 to 3 blindly.
    """

    def __init__(self, shop: str, seed: int, tz_minutes: int, products: int, customers: int,
                 variant_count: Callable[[int], int] | None = None) -> None:
        self.shop = shop
        self.seed = seed
        self.tz = timezone(timedelta(minutes=tz_minutes))
        self.products = max(products, 50)
        self.customers = max(customers, 50)
        self.variant_count = variant_count
        self._people: dict[int, dict[str, Any]] = {}

    def timestamp(self, epoch_us: int) -> str:
        """Epoch microseconds as a whole second in the shop's offset, e.g. "2024-01-10T11:00:00-05:00"."""
        return datetime.fromtimestamp(epoch_us // US, self.tz).isoformat()

    def _rng(self, data_type: str, record: Record) -> random.Random:
        return random.Random(f"{self.seed}:{data_type}:{record.index}:{record.version}")

    def render(self, data_type: str, record: Record) -> dict[str, Any]:
        """The full document of `record` as Shopify's REST API returns it."""
        if data_type == "orders":
            return self.order(record)
        if data_type == "products":
            return self.product(record)
        return self.customer(record)

    # -- customers ---------------------------------------------------------------------------------

    def person(self, index: int) -> dict[str, Any]:
        """Name, contact and address of the customer with ordinal `index` (stable across versions).

        Cached: the dict is shared between documents, which is safe because documents are only serialised.
        """
        person = self._people.get(index)
        if person is None:
            person = self._people[index] = self._new_person(index)
        return person

    def _new_person(self, index: int) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:person:{index}")
        first, last = pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES)
        city = pick(rng, CITIES)
        customer_id = record_id("customers", index)
        return {
            "id": customer_id,
            "first_name": first,
            "last_name": last,
            "email": f"customer{index}@example.com",
            "phone": f"+1613555{index % 10_000:04d}" if rng.random() < 0.6 else None,
            "address": self.address(first, last, city, rng, customer_id),
        }

    def address(self, first: str, last: str, city: tuple, rng: random.Random,
                customer_id: int | None = None) -> dict[str, Any]:
        """A postal address with float coordinates, like Shopify's billing/shipping addresses."""
        name, province, province_code, country, country_code, zip_code, lat, lon = city
        address = {
            "first_name": first,
            "address1": f"{between(rng, 1, 999)} Rue de l'Église",
            "phone": None,
            "city": name,
            "zip": zip_code,
            "province": province,
            "country": country,
            "last_name": last,
            "address2": pick(rng, ("", None, "Suite 4")),
            "company": pick(rng, (None, None, "Ünïcode GmbH")),
            "latitude": round(lat + rng.uniform(-0.05, 0.05), 7),
            "longitude": round(lon + rng.uniform(-0.05, 0.05), 7),
            "name": f"{first} {last}",
            "country_code": country_code,
            "province_code": province_code,
        }
        if customer_id is not None:
            address = {"id": customer_id + 7, "customer_id": customer_id, **address,
                       "country_name": country, "default": True}
        return address

    def customer(self, record: Record) -> dict[str, Any]:
        """A customer document with addresses and marketing consent."""
        rng = self._rng("customers", record)
        person = self.person(record.index)
        orders_count = between(rng, 0, 20)
        spent = between(rng, 0, 500_000) if orders_count else 0
        created, updated = self.timestamp(record.created), self.timestamp(record.updated)
        return {
            "id": record.id,
            "email": person["email"],
            "created_at": created,
            "updated_at": updated,
            "first_name": person["first_name"],
            "last_name": person["last_name"],
            "orders_count": orders_count,
            "state": record.state,
            "total_spent": money(spent),
            "last_order_id": record_id("orders", between(rng, 0, 1000)) if orders_count else None,
            "note": pick(rng, NOTES),
            "verified_email": rng.random() < 0.9,
            "multipass_identifier": None,
            "tax_exempt": rng.random() < 0.05,
            "tags": tags(rng),
            "last_order_name": f"#{1000 + between(rng, 1, 1000)}" if orders_count else None,
            "currency": "USD",
            "phone": person["phone"],
            "addresses": [person["address"]],
            "tax_exemptions": [],
            "email_marketing_consent": {
                "state": pick(rng, ("subscribed", "not_subscribed", "unsubscribed")),
                "opt_in_level": "single_opt_in",
                "consent_updated_at": created if rng.random() < 0.5 else None,
            },
            "sms_marketing_consent": None,
            "admin_graphql_api_id": f"gid://shopify/Customer/{record.id}",
            "default_address": person["address"],
        }

    # -- products ----------------------------------------------------------------------------------

    def product(self, record: Record) -> dict[str, Any]:
        """A product document with `record.size` variants, options and an image."""
        rng = self._rng("products", record)
        title = f"{PRODUCT_WORDS[record.index % len(PRODUCT_WORDS)]} {record.index}"
        created, updated = self.timestamp(record.created), self.timestamp(record.updated)
        image_id = record.id + 11
        variants = []
        for position in range(1, record.size + 1):
            variant_id = variant_id_of(record.index, position)
            price = between(rng, 500, 50_000)
            variants.append({
                "id": variant_id,
                "product_id": record.id,
                "title": COLORS[position % len(COLORS)],
                "price": money(price),
                "position": position,
                "inventory_policy": "continue",
                "compare_at_price": money(price + 1000) if rng.random() < 0.3 else None,
                "option1": COLORS[position % len(COLORS)],
                "option2": None,
                "option3": None,
                "created_at": created,
                "updated_at": updated,
                "taxable": True,
                "barcode": f"{between(rng, 10**11, 10**12)}",
                "fulfillment_service": "manual",
                "grams": between(rng, 0, 3000),
                "inventory_management": "shopify",
                "requires_shipping": True,
                "sku": f"SKU-{record.index}-{position}",
                "weight": round(rng.uniform(0.0, 3.0), 2),
                "weight_unit": "kg",
                "inventory_item_id": variant_id + 3,
                "inventory_quantity": between(rng, -5, 200),
                "old_inventory_quantity": between(rng, -5, 200),
                "admin_graphql_api_id": f"gid://shopify/ProductVariant/{variant_id}",
                "image_id": image_id if position == 1 else None,
            })
        image = {
            "id": image_id,
            "alt": None,
            "position": 1,
            "product_id": record.id,
            "created_at": created,
            "updated_at": updated,
            "admin_graphql_api_id": f"gid://shopify/ProductImage/{image_id}",
            "width": 123,
            "height": 456,
            "src": f"https://cdn.shopify.com/s/files/1/0005/4838/0009/products/p{record.index}.jpg",
            "variant_ids": [variants[0]["id"]],
        }
        return {
            "id": record.id,
            "title": title,
            "body_html": f"<p>It's the <strong>best</strong> {title} — ünïcödé included.</p>",
            "vendor": pick(rng, ("Apple", "Ünïcode Ltd", "Burton", "無印")),
            "product_type": pick(rng, ("Cult Products", "Apparel", "", "Home")),
            "created_at": created,
            "handle": f"product-{record.index}",
            "updated_at": updated,
            "published_at": created if record.state == "active" else None,
            "template_suffix": None,
            "published_scope": "global",
            "tags": tags(rng),
            "status": record.state,
            "admin_graphql_api_id": f"gid://shopify/Product/{record.id}",
            "variants": variants,
            "options": [{"id": record.id + 5, "product_id": record.id, "name": "Color", "position": 1,
                         "values": [v["option1"] for v in variants]}],
            "images": [image],
            "image": image,
        }

    # -- orders ------------------------------------------------------------------------------------

    def order(self, record: Record) -> dict[str, Any]:
        """An order document shaped like Shopify's documentation example (about 87 top-level keys)."""
        rng = self._rng("orders", record)
        number = record.index + 1
        order_number = 1000 + number
        created, updated = self.timestamp(record.created), self.timestamp(record.updated)
        person = self.person(below(rng, self.customers))
        first, last = person["first_name"], person["last_name"]
        billing = self.address(first, last, pick(rng, CITIES), rng)
        shipping = billing if rng.random() < 0.7 else self.address(first, last, pick(rng, CITIES), rng)
        line_items = [self.line_item(record, position, rng) for position in range(1, record.size + 1)]
        subtotal = sum(item["_cents"] for item in line_items)
        discount = subtotal // 10 if rng.random() < 0.2 else 0
        tax = sum(item["_tax"] for item in line_items)
        shipping_cents = pick(rng, (0, 500, 1000, 1500))
        total = subtotal - discount + tax + shipping_cents
        for item in line_items:
            del item["_cents"], item["_tax"]
        cancelled = record.state == "cancelled"
        closed = record.state in ("closed", "cancelled")
        refunds = [self.refund(record, line_items[0], rng)] if cancelled or rng.random() < 0.1 else []
        fulfillments = [self.fulfillment(record, line_items, rng)] if record.state == "closed" else []
        token = f"{rng.getrandbits(128):032x}"
        currency = "USD"
        return {
            "id": record.id,
            "admin_graphql_api_id": f"gid://shopify/Order/{record.id}",
            "app_id": 580111,
            "browser_ip": f"10.{below(rng, 256)}.{below(rng, 256)}.{below(rng, 256)}",
            "buyer_accepts_marketing": rng.random() < 0.4,
            "cancel_reason": "customer" if cancelled else None,
            "cancelled_at": updated if cancelled else None,
            "cart_token": None if rng.random() < 0.3 else f"{rng.getrandbits(64):016x}",
            "checkout_id": record.id + 101,
            "checkout_token": f"{rng.getrandbits(64):016x}",
            "client_details": {
                "accept_language": pick(rng, ("en-US", "fr-CA", "de-DE", None)),
                "browser_height": None,
                "browser_ip": "0.0.0.0",
                "browser_width": None,
                "session_hash": None,
                "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            },
            "closed_at": updated if closed else None,
            "company": None,
            "confirmation_number": f"{rng.getrandbits(36):09X}",
            "confirmed": True,
            "contact_email": person["email"],
            "created_at": created,
            "currency": currency,
            "current_subtotal_price": money(subtotal - discount),
            "current_subtotal_price_set": money_set(subtotal - discount),
            "current_total_additional_fees_set": None,
            "current_total_discounts": money(discount),
            "current_total_discounts_set": money_set(discount),
            "current_total_duties_set": None,
            "current_total_price": money(0 if cancelled else total),
            "current_total_price_set": money_set(0 if cancelled else total),
            "current_total_tax": money(tax),
            "current_total_tax_set": money_set(tax),
            "customer_locale": pick(rng, ("en", "fr", "de", "ja")),
            "device_id": None,
            "discount_codes": [{"code": "TENOFF", "amount": money(discount), "type": "percentage"}]
            if discount else [],
            "email": person["email"],
            "estimated_taxes": False,
            "financial_status": "refunded" if cancelled else pick(rng, ("paid", "paid", "pending",
                                                                          "partially_refunded")),
            "fulfillment_status": "fulfilled" if fulfillments else None,
            "landing_site": "/",
            "landing_site_ref": None,
            "location_id": None,
            "merchant_of_record_app_id": None,
            "name": f"#{order_number}",
            "note": pick(rng, NOTES),
            "note_attributes": [{"name": "colour", "value": "rouge"}] if rng.random() < 0.3 else [],
            "number": number,
            "order_number": order_number,
            "order_status_url": f"https://{self.shop}.myshopify.com/548380009/orders/{token}/authenticate"
                                f"?key=a{token[:8]}",
            "original_total_additional_fees_set": None,
            "original_total_duties_set": None,
            "payment_gateway_names": ["bogus"],
            "phone": person["phone"],
            "po_number": None,
            "presentment_currency": currency,
            "processed_at": created,
            "reference": None,
            "referring_site": pick(rng, (None, "https://www.google.com/", "")),
            "source_identifier": None,
            "source_name": pick(rng, ("web", "pos", "shopify_draft_order")),
            "source_url": None,
            "subtotal_price": money(subtotal - discount),
            "subtotal_price_set": money_set(subtotal - discount),
            "tags": tags(rng),
            "tax_exempt": False,
            "tax_lines": [tax_line(tax, 0.06)] if tax else [],
            "taxes_included": False,
            "test": rng.random() < 0.02,
            "token": token,
            "total_discounts": money(discount),
            "total_discounts_set": money_set(discount),
            "total_line_items_price": money(subtotal),
            "total_line_items_price_set": money_set(subtotal),
            "total_outstanding": "0.00",
            "total_price": money(total),
            "total_price_set": money_set(total),
            "total_shipping_price_set": money_set(shipping_cents),
            "total_tax": money(tax),
            "total_tax_set": money_set(tax),
            "total_tip_received": "0.00",
            "total_weight": sum(item["grams"] for item in line_items),
            "updated_at": updated,
            "user_id": None,
            "billing_address": billing,
            "customer": {
                "id": person["id"],
                "email": person["email"],
                "created_at": created,
                "updated_at": updated,
                "first_name": first,
                "last_name": last,
                "state": "enabled",
                "note": None,
                "verified_email": True,
                "multipass_identifier": None,
                "tax_exempt": False,
                "phone": person["phone"],
                "currency": currency,
                "tax_exemptions": [],
                "admin_graphql_api_id": f"gid://shopify/Customer/{person['id']}",
                "default_address": person["address"],
            },
            "discount_applications": [{"target_type": "line_item", "type": "discount_code",
                                       "value": "10.0", "value_type": "percentage",
                                       "allocation_method": "across", "target_selection": "all",
                                       "code": "TENOFF"}] if discount else [],
            "fulfillments": fulfillments,
            "line_items": line_items,
            "payment_terms": None,
            "refunds": refunds,
            "shipping_address": shipping,
            "shipping_lines": [{
                "id": record.id + 202,
                "carrier_identifier": None,
                "code": "Standard",
                "discounted_price": money(shipping_cents),
                "discounted_price_set": money_set(shipping_cents),
                "phone": None,
                "price": money(shipping_cents),
                "price_set": money_set(shipping_cents),
                "requested_fulfillment_service_id": None,
                "source": "shopify",
                "title": "Standard Shipping — Livraison",
                "tax_lines": [],
                "discount_allocations": [],
            }],
        }

    def line_item(self, record: Record, position: int, rng: random.Random) -> dict[str, Any]:
        """One line item; `_cents` and `_tax` are working values the order removes after summing."""
        product_index = below(rng, self.products)
        product_id = record_id("products", product_index)
        variant_position = between(rng, 1, 4)
        variants = self.variant_count(product_index) if self.variant_count else 0
        if variants:
            variant_position = min(variant_position, variants)
        quantity = between(rng, 1, 4)
        price = between(rng, 199, 30_000)
        cents = price * quantity
        tax = round(cents * 0.06)
        item_id = LINE_ITEM_ID_BASE + record.index * 1000 + position
        title = f"{PRODUCT_WORDS[product_index % len(PRODUCT_WORDS)]} {product_index}"
        return {
            "id": item_id,
            "admin_graphql_api_id": f"gid://shopify/LineItem/{item_id}",
            "attributed_staffs": [],
            "current_quantity": quantity,
            "fulfillable_quantity": quantity if record.state == "open" else 0,
            "fulfillment_service": "manual",
            "fulfillment_status": None if record.state == "open" else "fulfilled",
            "gift_card": False,
            "grams": between(rng, 0, 2000),
            "name": f"{title} - {COLORS[variant_position]}",
            "price": money(price),
            "price_set": money_set(price),
            "product_exists": True,
            "product_id": product_id,
            "properties": [{"name": "Engraving", "value": "Für Elise ♪"}] if rng.random() < 0.1 else [],
            "quantity": quantity,
            "requires_shipping": True,
            "sku": f"SKU-{product_index}-{variant_position}",
            "taxable": True,
            "title": title,
            "total_discount": "0.00",
            "total_discount_set": money_set(0),
            "variant_id": variant_id_of(product_index, variant_position),
            "variant_inventory_management": "shopify",
            "variant_title": COLORS[variant_position],
            "vendor": None,
            "tax_lines": [tax_line(tax, 0.06)],
            "duties": [],
            "discount_allocations": [],
            "_cents": cents,
            "_tax": tax,
        }

    def refund(self, record: Record, item: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """A refund of the first line item, with its float `subtotal` as Shopify sends it."""
        refund_id = record.id + 303
        amount = int(item["price"].replace(".", ""))
        return {
            "id": refund_id,
            "admin_graphql_api_id": f"gid://shopify/Refund/{refund_id}",
            "created_at": self.timestamp(record.updated),
            "note": "Kunde hat storniert",
            "order_id": record.id,
            "processed_at": self.timestamp(record.updated),
            "restock": True,
            "total_duties_set": money_set(0),
            "user_id": None,
            "order_adjustments": [],
            "transactions": [{"id": refund_id + 1, "amount": money(amount), "kind": "refund",
                              "status": "success", "gateway": "bogus", "currency": "USD"}],
            "refund_line_items": [{
                "id": refund_id + 2,
                "line_item_id": item["id"],
                "location_id": None,
                "quantity": 1,
                "restock_type": "cancel",
                "subtotal": amount / 100,
                "subtotal_set": money_set(amount),
                "total_tax": round(amount * 0.06 / 100, 2),
                "total_tax_set": money_set(round(amount * 0.06)),
            }],
            "duties": [],
        }

    def fulfillment(self, record: Record, line_items: list[dict[str, Any]], rng: random.Random) -> dict:
        """A successful fulfillment of every line item (ids only, to keep the document proportionate)."""
        fulfillment_id = record.id + 404
        return {
            "id": fulfillment_id,
            "admin_graphql_api_id": f"gid://shopify/Fulfillment/{fulfillment_id}",
            "created_at": self.timestamp(record.updated),
            "location_id": 487838322,
            "name": f"#{1001 + record.index}.1",
            "order_id": record.id,
            "origin_address": {},
            "receipt": {},
            "service": "manual",
            "shipment_status": None,
            "status": "success",
            "tracking_company": "UPS",
            "tracking_number": f"1Z{rng.getrandbits(40):010X}",
            "tracking_numbers": [],
            "tracking_url": None,
            "tracking_urls": [],
            "updated_at": self.timestamp(record.updated),
            "line_items": [{"id": item["id"], "quantity": item["quantity"]} for item in line_items],
        }


def below(rng: random.Random, n: int) -> int:
    """A whole number in [0, n): rng.randrange without its checks, which dominate rendering time."""
    return int(rng.random() * n)


def between(rng: random.Random, low: int, high: int) -> int:
    """A whole number in [low, high)."""
    return low + int(rng.random() * (high - low))


def pick(rng: random.Random, choices: tuple | list) -> Any:
    """One of `choices` (rng.choice, faster)."""
    return choices[int(rng.random() * len(choices))]


def variant_id_of(product_index: int, position: int) -> int:
    """The id of a product's variant, computable from an order's line item without the product."""
    if position >= 16:
        return LARGE_VARIANT_ID_BASE + product_index * LARGE_VARIANT_ID_STEP + position
    return VARIANT_ID_BASE + product_index * 16 + position


@functools.lru_cache(maxsize=65_536)
def money(cents: int) -> str:
    """Cents as Shopify's money string, e.g. 59894 → "598.94" (never through a float)."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


@functools.lru_cache(maxsize=65_536)
def money_set(cents: int, currency: str = "USD") -> dict[str, dict[str, str]]:
    """Shopify's `*_set`: the same amount in shop and presentment money (shared: only ever serialised)."""
    amount = money(cents)
    return {"shop_money": {"amount": amount, "currency_code": currency},
            "presentment_money": {"amount": amount, "currency_code": currency}}


def tax_line(cents: int, rate: float) -> dict[str, Any]:
    """A tax line with a float `rate` as Shopify sends it."""
    return {"price": money(cents), "rate": rate, "title": "State Tax", "price_set": money_set(cents),
            "channel_liable": None}


def tags(rng: random.Random) -> str:
    """Shopify's tags: one comma-and-space separated string, often empty."""
    return ", ".join(rng.sample(TAGS, pick(rng, (0, 0, 1, 2, 3))))
