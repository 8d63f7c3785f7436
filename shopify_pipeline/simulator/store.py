"""A shop's source of truth per data type: compact records, sorted views, mutations and keyset queries."""

from __future__ import annotations

import json
import random
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from shopify_pipeline.simulator.data import US, Record, Renderer, initial_state, record_id, record_size
from shopify_pipeline.simulator.paging import ListRequest

# Query field → Record attribute holding epoch seconds (or the id itself).
SORT_ATTRIBUTES = {"id": "id", "created_at": "created", "updated_at": "updated"}
SUBJECT_TYPES = {"orders": "Order", "products": "Product", "customers": "Customer"}
# Shopify's deprecated REST products endpoints return at most this many variants per product.
REST_VARIANT_LIMIT = 100


def dumps(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; Python ints are written exactly, whatever their size."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class RenderCache:
    """Rendered JSON of (data type, id, version), least recently used dropped beyond `max_bytes`."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        """The cached JSON, or None."""
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: tuple[str, int, int], body: bytes) -> None:
        """Remember `body`, evicting the oldest entries past the byte budget."""
        with self._lock:
            if key in self._items:
                return
            self._items[key] = body
            self._bytes += len(body)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


class Event:
    """An entry of events.json; only deletions are recorded (what clients need to find deletes)."""

    __slots__ = ("id", "created", "updated", "subject_type", "subject_id", "verb", "name", "deleted")

    def __init__(self, id_: int, created: int, subject_type: str, subject_id: int, verb: str,
                 name: str) -> None:
        self.id = id_
        self.created = created
        self.updated = created
        self.subject_type = subject_type
        self.subject_id = subject_id
        self.verb = verb
        self.name = name
        self.deleted = False


class Collection:
    """Records of one kind sorted by id, with lazily built views sorted by (timestamp, id)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.by_id = {item.id: item for item in items}
        self._views: dict[str, tuple[list[tuple[int, int]], list[Any]]] = {}

    def add(self, item: Any) -> None:
        """Append an item whose id is above every other; built views take it in place."""
        self.items.append(item)
        self.by_id[item.id] = item
        for attribute, (keys, items) in self._views.items():
            if items is self.items:
                keys.append((item.id, item.id))
                continue
            key = (getattr(item, attribute), item.id)
            position = bisect_right(keys, key)
            keys.insert(position, key)
            items.insert(position, item)

    def move(self, item: Any, old_updated: int) -> None:
        """Re-sort an item whose `updated` changed from `old_updated` (a list shift, not a full sort)."""
        view = self._views.get("updated")
        if view is None or view[1] is self.items:
            return
        keys, items = view
        position = bisect_left(keys, (old_updated, item.id))
        del keys[position], items[position]
        key = (item.updated, item.id)
        position = bisect_right(keys, key)
        keys.insert(position, key)
        items.insert(position, item)

    def view(self, sort_field: str) -> tuple[list[tuple[int, int]], list[Any]]:
        """(keys, items) sorted by (sort value, id); keys are what a page_info cursor compares with."""
        attribute = SORT_ATTRIBUTES[sort_field]
        if attribute not in self._views:
            items = self.items if attribute == "id" else sorted(
                self.items, key=lambda item: (getattr(item, attribute), item.id))
            self._views[attribute] = ([(getattr(item, attribute), item.id) for item in items], items)
        return self._views[attribute]

    def page(self, request: ListRequest, matches: Callable[[Any], bool]) -> tuple[list[Any], bool]:
        """Up to `limit` matching items after (or before) the cursor in the request's order.

        Returns the items in the request's order and whether more matching items lie beyond them.
        Keyset on (sort value, id) keeps paging gap-free while records change: an item updated
        mid-sync moves past the cursor and is served again rather than skipped.
        """
        keys, items = self.view(request.order[0])
        ascending = (request.order[1] == "asc") == (request.direction == "next")
        cursor = request.cursor
        if ascending:
            start = bisect_right(keys, cursor) if cursor is not None else 0
            indexes: Iterator[int] = iter(range(start, len(items)))
        else:
            start = bisect_left(keys, cursor) - 1 if cursor is not None else len(items) - 1
            indexes = iter(range(start, -1, -1))
        found: list[Any] = []
        for index in indexes:
            item = items[index]
            if not item.deleted and matches(item):
                if len(found) == request.limit:
                    more = True
                    break
                found.append(item)
        else:
            more = False
        if request.direction == "prev":
            found.reverse()
        return found, more

    def count(self, matches: Callable[[Any], bool]) -> int:
        """How many live items match."""
        return sum(1 for item in self.items if not item.deleted and matches(item))


def record_filter(filters: dict[str, Any], oldest_created: int | None) -> Callable[[Any], bool]:
    """A predicate for the JSON-ready filters of a ListRequest (and the 60-day window, if any)."""
    checks: list[Callable[[Any], bool]] = []
    if "status" in filters and "any" not in filters["status"]:
        statuses = set(filters["status"])
        checks.append(lambda item: item.state in statuses)
    bounds = (("created_at_min", "created", True), ("created_at_max", "created", False),
              ("updated_at_min", "updated", True), ("updated_at_max", "updated", False))
    for name, attribute, is_min in bounds:
        if name in filters:
            limit = filters[name]
            if is_min:
                checks.append(lambda item, a=attribute, v=limit * US: getattr(item, a) >= v)
            else:
                # Inclusive of the whole second the client named, as documents show whole seconds.
                checks.append(lambda item, a=attribute, v=(limit + 1) * US: getattr(item, a) < v)
    if oldest_created is not None:
        checks.append(lambda item: item.created >= oldest_created * US)
    if "since_id" in filters:
        since = filters["since_id"]
        checks.append(lambda item: item.id > since)
    if "ids" in filters:
        ids = set(filters["ids"])
        checks.append(lambda item: item.id in ids)
    if "filter" in filters:
        subjects = set(filters["filter"])
        checks.append(lambda item: item.subject_type in subjects)
    if "verb" in filters:
        verbs = set(filters["verb"])
        checks.append(lambda item: item.verb in verbs)
    return lambda item: all(check(item) for check in checks)


class ShopData:
    """Every collection of one shop, its renderer and event log; callers hold `lock` while querying."""

    def __init__(self, renderer: Renderer, collections: dict[str, list[Record]], seed: int,
                 large_every: int, large_size: int, cache: RenderCache,
                 large_products: tuple[int, int] = (0, 0)) -> None:
        self.renderer = renderer
        self.collections = {name: Collection(items) for name, items in collections.items()}
        self.events = Collection([])
        self.seed = seed
        # (every n-th record is large, its size) per data type; orders keep their historical arguments.
        self.large = {"orders": (large_every, large_size), "products": large_products}
        self.cache = cache
        self.lock = threading.RLock()
        # Told of every change while `lock` is held: (data type, "create" | "update" | "delete", records).
        self.listener: Callable[[str, str, list[Record]], None] | None = None
        self._latest = max((record.updated for items in collections.values() for record in items), default=0)

    def render_bytes(self, data_type: str, record: Record) -> bytes:
        """The JSON of a record at its current version (from the cache when possible)."""
        key = (f"{self.renderer.shop}/{data_type}", record.id, record.version)
        body = self.cache.get(key)
        if body is None:
            body = dumps(self.renderer.render(data_type, record))
            self.cache.put(key, body)
        return body

    def rest_bytes(self, data_type: str, record: Record) -> bytes:
        """The JSON REST serves: the whole document, except that a product keeps only its first
        REST_VARIANT_LIMIT variants by position (Shopify's deprecated REST products cut silently)."""
        if data_type != "products" or record.size <= REST_VARIANT_LIMIT:
            return self.render_bytes(data_type, record)
        key = (f"{self.renderer.shop}/products/rest", record.id, record.version)
        body = self.cache.get(key)
        if body is None:
            document = json.loads(self.render_bytes(data_type, record))
            document["variants"] = sorted(document["variants"], key=lambda v: v["position"])[:REST_VARIANT_LIMIT]
            body = dumps(document)
            self.cache.put(key, body)
        return body

    def render_event(self, event: Event) -> dict[str, Any]:
        """An events.json entry for a deletion, as Shopify shapes it."""
        path = {"Order": "orders", "Product": "products", "Customer": "customers"}[event.subject_type]
        return {
            "id": event.id,
            "subject_id": event.subject_id,
            "created_at": self.renderer.timestamp(event.created),
            "subject_type": event.subject_type,
            "verb": event.verb,
            "arguments": [event.name],
            "body": None,
            "message": f"{event.subject_type} {event.name} was deleted.",
            "author": "Shopify",
            "description": f"{event.subject_type} {event.name} was deleted.",
            "path": f"/admin/{path}/{event.subject_id}",
        }

    def _next_change(self, previous: int = 0) -> int:
        """Epoch microseconds for a change: now, but after every earlier change of this shop and in a
        later whole second than `previous` (a record's old updated_at), so the visible value moves too."""
        self._latest = max(time.time_ns() // 1000, self._latest + 1, (previous // US + 1) * US)
        return self._latest

    def update(self, data_type: str, n: int, seed: int, ids: list[int] | None = None) -> list[int]:
        """Bump `n` live records (chosen by `seed`, or exactly `ids`): new version, later updated_at.

        Orders may also change state (open → closed) as real orders do. Returns the ids updated.
        """
        with self.lock:
            collection = self.collections[data_type]
            chosen = self._choose(collection, n, seed, ids)
            rng = random.Random(f"update:{seed}")
            for record in chosen:
                record.version += 1
                old_updated, record.updated = record.updated, self._next_change(record.updated)
                collection.move(record, old_updated)
                if data_type == "orders" and record.state == "open" and rng.random() < 0.3:
                    record.state = "closed"
            self._tell(data_type, "update", chosen)
            return [record.id for record in chosen]

    def create(self, data_type: str, n: int, seed: int) -> list[int]:
        """Add `n` records created now (ids above every existing one). Returns their ids."""
        with self.lock:
            collection = self.collections[data_type]
            rng = random.Random(f"create:{seed}")
            created: list[Record] = []
            for _ in range(n):
                index = len(collection.items)
                now = self._next_change()
                state = "open" if data_type == "orders" else initial_state(data_type, rng)
                large_every, large_size = self.large.get(data_type, (0, 0))
                size = record_size(data_type, index, rng, large_every, large_size)
                record = Record(record_id(data_type, index), index, now, now, state, size)
                collection.add(record)
                created.append(record)
            self._tell(data_type, "create", created)
            return [record.id for record in created]

    def delete(self, data_type: str, n: int, seed: int, ids: list[int] | None = None) -> list[int]:
        """Delete `n` live records (or exactly `ids`); each deletion appears in events.json."""
        with self.lock:
            collection = self.collections[data_type]
            chosen = self._choose(collection, n, seed, ids)
            for record in chosen:
                record.deleted = True
                event_id = record_id("events", len(self.events.items))
                name = f"#{1001 + record.index}" if data_type == "orders" else str(record.id)
                event = Event(event_id, self._next_change(), SUBJECT_TYPES[data_type], record.id,
                              "destroy", name)
                self.events.add(event)
            self._tell(data_type, "delete", chosen)
            return [record.id for record in chosen]

    def _tell(self, data_type: str, action: str, records: list[Record]) -> None:
        if self.listener is not None and records:
            self.listener(data_type, action, records)

    def _choose(self, collection: Collection, n: int, seed: int, ids: list[int] | None) -> list[Record]:
        if ids is not None:
            found = (collection.by_id.get(wanted) for wanted in ids)
            return [record for record in found if record is not None and not record.deleted]
        live = [record for record in collection.items if not record.deleted]
        chosen = random.Random(f"choose:{seed}").sample(live, min(n, len(live)))
        return sorted(chosen, key=lambda record: record.id)
