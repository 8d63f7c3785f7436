"""Shopify's bulk query operations: `bulkOperationRunQuery`, polling, cancel, and the JSONL result file.

An operation snapshots the matching root records when it is created, then a worker thread runs the inner
query with graphql-core over them (every item of every nested connection, no cost limits) and writes the
JSONL file: one object a line, nested connections flattened into child lines carrying `__parentId`. What
a poll sees is computed from the simulated time since creation: CREATED, then RUNNING with objectCount
growing at BulkConfig.objects_per_second, then COMPLETED with a signed `url` that expires. Faults on demand
(BulkFaults) fail, stall or cut an operation or its downloads.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    OperationType,
    execute_sync,
    get_named_type,
    is_leaf_type,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values

from shopify_pipeline.simulator.config import BULK_CONCURRENT_VERSION, BulkConfig, BulkFaults
from shopify_pipeline.simulator.data import US
from shopify_pipeline.simulator.graphql_api import (
    BULK_SCHEMA,
    SCHEMA,
    SCOPES_NEEDED,
    SORT_FIELDS,
    TYPE_NAMES,
    Context,
    CostPlanner,
    QueryRoot,
    RecordNode,
    compare,
    connection,
    event_node,
    gid,
    page_size,
    parse_search_time,
    resolve_field,
    resolve_type,
    search_filter,
    search_terms,
    snapshot,
    utc_from_us,
)
from shopify_pipeline.simulator.shop import ShopRuntime
from shopify_pipeline.simulator.store import dumps

# Operation ids look like Shopify's (13 digits) and grow across every shop of one simulator.
FIRST_OPERATION_NUMBER = 4_039_184_154_813
CONCURRENT_LIMIT = 5  # bulk queries per shop at once from API 2026-01 on; one before
MAX_CONNECTIONS = 5
MAX_NESTING_DEPTH = 2
ROOTS_PER_CHUNK = 100  # root records run through graphql-core at a time (and shuffled together when ungrouped)
ACTIVE = ("CREATED", "RUNNING", "CANCELING")
IN_PROGRESS = "A bulk query operation for this app and shop is already in progress: {id}."
EXPIRED_BODY = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                b"<Message>Access denied.</Message><Details>Request has expired</Details></Error>")
SIGNATURE_BODY = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
                  b"<Message>The request signature we calculated does not match the signature you provided."
                  b"</Message></Error>")
NO_SUCH_KEY_BODY = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                    b"<Message>The specified key does not exist.</Message></Error>")


def user_error(message: str, code: str | None = "INVALID", field_path: list[str] | None = None) -> dict[str, Any]:
    """A BulkOperationUserError."""
    return {"field": field_path, "message": message, "code": code}


# -- the inner query: checks and the shape of its JSONL ------------------------------------------------


@dataclass
class Shape:
    """What of one selected object becomes other lines: its connections, and objects that hold some."""

    connections: dict[str, ConnectionShape] = field(default_factory=dict)
    objects: dict[str, Shape] = field(default_factory=dict)

    def has_connections(self) -> bool:
        return bool(self.connections) or any(inner.has_connections() for inner in self.objects.values())


@dataclass
class ConnectionShape:
    """A connection field by its response keys: `edges`, `node`, and the shape of one node."""

    name: str
    edges_key: str | None = None
    node_key: str | None = None
    node: Shape = field(default_factory=Shape)


@dataclass
class BulkPlan:
    """A checked bulk query: its document, root field (by name and response key), arguments and shape."""

    document: DocumentNode
    root_name: str
    root_key: str
    root_args: dict[str, Any]
    shape: ConnectionShape


class ShapeBuilder:
    """Walks a bulk query's selections with the schema's types: connections, depth, `nodes`, parent ids."""

    def __init__(self, document: DocumentNode) -> None:
        self.planner = CostPlanner(document, None)
        self.connections = 0
        self.depth = 0
        self.via_nodes: list[str] = []
        self.without_id: list[str] = []

    def fields(self, selection_set: Any, parent: Any) -> dict[str, list[tuple[FieldNode, Any]]]:
        return self.planner.collect(selection_set, parent, {})

    def object_shape(self, fields: dict[str, list[tuple[FieldNode, Any]]], depth: int) -> Shape:
        """The shape of an object whose selected fields are `fields`, inside `depth` connections."""
        shape = Shape()
        for key, entries in fields.items():
            node, parent = entries[0]
            definition = getattr(parent, "fields", {}).get(node.name.value)
            if definition is None:
                continue
            named = get_named_type(definition.type)
            if is_leaf_type(named):
                continue
            sub_fields: dict[str, list[tuple[FieldNode, Any]]] = {}
            for entry, _ in entries:
                self.planner.collect(entry.selection_set, named, sub_fields)
            if named.name.endswith("Connection"):
                shape.connections[key] = self.connection_shape(node.name.value, named, sub_fields, depth + 1)
            else:
                inner = self.object_shape(sub_fields, depth)
                if inner.has_connections():
                    shape.objects[key] = inner
        return shape

    def connection_shape(self, name: str, named: Any, sub_fields: dict[str, list[tuple[FieldNode, Any]]],
                         depth: int) -> ConnectionShape:
        self.connections += 1
        self.depth = max(self.depth, depth)
        shape = ConnectionShape(name)
        item_type = get_named_type(named.fields["nodes"].type)
        edge_type = get_named_type(named.fields["edges"].type)
        items: dict[str, list[tuple[FieldNode, Any]]] = {}
        for key, found in sub_fields.items():
            selected = found[0][0].name.value
            if selected == "nodes":
                self.via_nodes.append(name)
            elif selected == "edges":
                shape.edges_key = key
                edge_fields: dict[str, list[tuple[FieldNode, Any]]] = {}
                for entry, _ in found:
                    self.planner.collect(entry.selection_set, edge_type, edge_fields)
                for edge_key, node_fields in edge_fields.items():
                    if node_fields[0][0].name.value == "node":
                        shape.node_key = edge_key
                        for entry, _ in node_fields:
                            self.planner.collect(entry.selection_set, item_type, items)
        shape.node = self.object_shape(items, depth)
        if shape.node.has_connections() and not (
                "id" in items and items["id"][0][0].name.value == "id" and items["id"][0][0].alias is None):
            self.without_id.append(name)
        return shape


def check_bulk_query(query: str) -> tuple[BulkPlan | None, list[dict[str, Any]]]:
    """The plan of a bulk query, or the userErrors Shopify gives for it (messages as Shopify words them
    where known: no connection, top-level `node`, more than 5 connections, nesting deeper than 2, `nodes`
    instead of `edges { node }`, a parent without `id`, a mutation)."""
    try:
        document = parse(query)
    except GraphQLSyntaxError as error:
        return None, [user_error(f"Invalid bulk query: {error.message}", field_path=["query"])]
    operations = [definition for definition in document.definitions
                  if isinstance(definition, OperationDefinitionNode)]
    if any(operation.operation != OperationType.QUERY for operation in operations):
        return None, [user_error("Invalid operation type. Only `query` operations are supported.",
                                 field_path=["query"])]
    if len(operations) != 1:
        return None, [user_error("Bulk queries must contain exactly one operation.", field_path=["query"])]
    errors = validate(BULK_SCHEMA, document)
    if errors:
        return None, [user_error(f"Invalid bulk query: {error.message}", field_path=["query"]) for error in errors]
    builder = ShapeBuilder(document)
    roots = builder.fields(operations[0].selection_set, SCHEMA.query_type)
    shape = builder.object_shape(roots, 0)
    problems = []
    for entries in roots.values():
        if entries[0][0].name.value in ("node", "nodes"):
            problems.append(f"Bulk queries cannot contain a top level `{entries[0][0].name.value}` field.")
    if builder.connections == 0:
        problems.append("Bulk queries must contain at least one connection.")
    elif len(roots) != 1 or not shape.connections:
        problems.append("Bulk queries must select a single top level connection field.")
    if builder.connections > MAX_CONNECTIONS:
        problems.append(f"Bulk queries cannot contain more than {MAX_CONNECTIONS} connections.")
    if builder.depth > MAX_NESTING_DEPTH:
        problems.append(f"Bulk queries cannot contain connections with a nesting depth greater than "
                        f"{MAX_NESTING_DEPTH}.")
    if builder.via_nodes:
        problems.append("All connection fields in a bulk query must select their contents using 'edges' > "
                        "'node', e.g: 'products { edges { node {'. Selecting via 'nodes' is not supported. "
                        f"Invalid connection fields: {', '.join(repr(name) for name in builder.via_nodes)}.")
    if builder.without_id:
        problems.append("The parent 'node' field for a nested connection must select the 'id' field without "
                        "an alias and must be of 'ID' return type. Connection fields without 'id': "
                        f"{', '.join(builder.without_id)}.")
    if problems:
        return None, [user_error(message, field_path=["query"]) for message in problems]
    root_key = next(iter(shape.connections))
    root_node = roots[root_key][0][0]
    root_name = root_node.name.value
    if root_name not in (*TYPE_NAMES, "events"):
        return None, [user_error(f"The simulator cannot run bulk queries on `{root_name}`.", field_path=["query"])]
    arguments = get_argument_values(BULK_SCHEMA.query_type.fields[root_name], root_node, {})
    return BulkPlan(document, root_name, root_key, arguments, shape.connections[root_key]), []


def flatten(value: dict[str, Any], shape: ConnectionShape, parent_id: str | None) -> Iterator[tuple[bool, bytes]]:
    """The JSONL lines of one connection's data, each with whether it is a root line: each node without its
    nested connections, then (depth first) the nodes of those connections, each with `__parentId`."""
    for edge in value.get(shape.edges_key or "") or ():
        node = edge.get(shape.node_key or "") if isinstance(edge, dict) else None
        if not isinstance(node, dict):
            continue
        children: list[tuple[dict[str, Any], ConnectionShape]] = []
        _detach(node, shape.node, children)
        if parent_id is not None:
            node["__parentId"] = parent_id
        yield parent_id is None, dumps(node)
        for child_value, child_shape in children:
            yield from flatten(child_value, child_shape, node.get("id"))


def _detach(value: dict[str, Any], shape: Shape, children: list[tuple[dict[str, Any], ConnectionShape]]) -> None:
    """Take the connections out of `value` (and out of objects inside it) into `children`."""
    for key, connection_shape in shape.connections.items():
        inner = value.pop(key, None)
        if isinstance(inner, dict):
            children.append((inner, connection_shape))
    for key, object_shape in shape.objects.items():
        inner = value.get(key)
        if isinstance(inner, dict):
            _detach(inner, object_shape, children)


class BulkRoot:
    """The root value of one chunk: the root connection holds exactly the chunk's records."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes

    def field(self, name: str, args: dict[str, Any]) -> Any:
        return connection(self.nodes, [str] * len(self.nodes), False, False)


# -- one operation --------------------------------------------------------------------------------------


@dataclass
class View:
    """An operation's state at one moment."""

    status: str
    error_code: str | None = None
    objects: int = 0
    completed_real: float | None = None
    url: bool = False
    partial: bool = False


class Operation:
    """One bulk query operation: its snapshot, the worker writing its file, and its timeline."""

    def __init__(self, service: BulkService, shop: ShopRuntime, number: int, query: str, plan: BulkPlan,
                 grouped: bool, faults: BulkFaults, config: BulkConfig) -> None:
        self.service = service
        self.shop = shop
        self.number = number
        self.id = gid("BulkOperation", number)
        self.query = query
        self.plan = plan
        self.grouped = grouped
        self.faults = faults
        self.config = config
        self.time_scale = service.time_scale
        self.created_real = time.time()
        self.token = secrets.token_hex(16)
        self.partial_token = secrets.token_hex(16)
        self.path = os.path.join(service.directory(), f"{self.token}.jsonl")
        self.canceled_real: float | None = None
        self.expired_real: float | None = None
        self.downloads_dropped: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # Progress of the worker: lines and root lines written, bytes, and when it finished (or failed).
        self.written = 0
        self.written_roots = 0
        self.size = 0
        self.done_real: float | None = None
        self.worker_failed = False
        self.partial_size = 0
        self.records = self._snapshot()

    def _snapshot(self) -> list[Any]:
        """The root records as they are now, in the query's order and filter (the operation's snapshot)."""
        name, args = self.plan.root_name, self.plan.root_args
        context = Context(self.shop, self.service.cursors, {})
        matches = QueryRoot(context).visible(name, args.get("query"))
        data = self.shop.data
        collection = data.events if name == "events" else data.collections[name]
        with data.lock:
            _, items = collection.view(SORT_FIELDS[args.get("sortKey") or "ID"])
            chosen = [item for item in items if not item.deleted and matches(item)]
            if args.get("reverse"):
                chosen.reverse()
            if name == "events":
                return [event_node(event) for event in chosen]
            return [snapshot(record) for record in chosen]

    # -- the worker ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Write the result file in a background thread."""
        threading.Thread(target=self._write, name=f"bulk-{self.number}", daemon=True).start()

    def _write(self) -> None:
        context = Context(self.shop, self.service.cursors, {}, unpaged=True)
        type_name = TYPE_NAMES.get(self.plan.root_name)
        try:
            with open(self.path, "wb") as out:
                for start in range(0, len(self.records), ROOTS_PER_CHUNK):
                    if self.stop.is_set():
                        return
                    chunk = self.records[start:start + ROOTS_PER_CHUNK]
                    nodes = chunk if type_name is None else [RecordNode(context, type_name, record)
                                                             for record in chunk]
                    lines = self._lines(context, nodes, start // ROOTS_PER_CHUNK)
                    out.write(b"".join(line + b"\n" for line in lines))
                    with self.lock:
                        self.written += len(lines)
                        self.written_roots += len(chunk)
                        self.size = out.tell()
            self.records = []  # the snapshot is in the file now
            self._measure_partial()
        except Exception:  # noqa: BLE001 - any failure of the export is the operation's INTERNAL_SERVER_ERROR
            with self.lock:
                self.worker_failed = True
        finally:
            with self.lock:
                self.done_real = time.time()

    def _lines(self, context: Context, nodes: list[Any], chunk_number: int) -> list[bytes]:
        result = execute_sync(BULK_SCHEMA, self.plan.document, root_value=BulkRoot(nodes), context_value=context,
                              field_resolver=resolve_field, type_resolver=resolve_type)
        if result.errors or result.data is None:
            raise RuntimeError(f"bulk query failed: {result.errors}")
        lines = list(flatten(result.data[self.plan.root_key], self.plan.shape, None))
        if self.grouped:
            return [line for _, line in lines]
        # Without groupObjects, children need not follow their parent: within each chunk the root lines keep
        # their order and the child lines are shuffled among them (deterministically), some before their parent.
        rng = random.Random(f"{self.number}:{chunk_number}")
        roots = [line for is_root, line in lines if is_root]
        children = [line for is_root, line in lines if not is_root]
        rng.shuffle(children)
        places = set(rng.sample(range(len(lines)), len(roots)))
        roots.reverse()
        children.reverse()
        return [roots.pop() if place in places else children.pop() for place in range(len(lines))]

    def _measure_partial(self) -> None:
        """The byte length of the partial file: the lines written before a `fail` fault struck."""
        if self.faults.fail is None or not self.faults.partial_data:
            return
        keep, size = self._limit(self.written), 0
        with open(self.path, "rb") as lines:
            for _ in range(keep):
                size += len(lines.readline())
        self.partial_size = size

    def _limit(self, total: int) -> int:
        return int(total * self.faults.fail_at)

    # -- the timeline -------------------------------------------------------------------------------

    def _real(self, simulated: float) -> float:
        """The real moment `simulated` seconds after creation."""
        return self.created_real + simulated / self.time_scale

    def view(self, now: float | None = None) -> View:
        """The state at `now` (real time), from the simulated time elapsed and the worker's progress."""
        now = time.time() if now is None else now
        config, faults = self.config, self.faults
        with self.lock:
            written, done_real, worker_failed = self.written, self.done_real, self.worker_failed
            canceled_real, expired_real = self.canceled_real, self.expired_real
        # A failing or stuck operation never shows more than the objects it gets to.
        cap = self._limit(written) if faults.stuck or faults.fail else written
        if canceled_real is not None:
            objects = self._progress(canceled_real, cap)
            ends = canceled_real + config.cancel_seconds / self.time_scale
            return View("CANCELED" if now >= ends else "CANCELING", objects=objects)
        elapsed = (now - self.created_real) * self.time_scale
        if elapsed < config.created_seconds:
            return View("CREATED")
        if faults.fail == "ACCESS_DENIED":
            return View("FAILED", "ACCESS_DENIED")
        timeout = View("FAILED", "TIMEOUT", self._progress(self._real(config.max_duration_seconds), written))
        if done_real is None or faults.stuck:
            if elapsed >= config.max_duration_seconds:
                return timeout
            return View("RUNNING", objects=self._progress(now, cap))
        if worker_failed:
            return View("FAILED", "INTERNAL_SERVER_ERROR", self._progress(done_real, written))
        ends = max(self._real(config.created_seconds + cap / config.objects_per_second), done_real)
        if (ends - self.created_real) * self.time_scale > config.max_duration_seconds:
            return timeout if elapsed >= config.max_duration_seconds else View(
                "RUNNING", objects=self._progress(now, written))
        if now < ends:
            return View("RUNNING", objects=self._progress(now, cap))
        expires = expired_real if expired_real is not None else ends + config.url_expiry_seconds / self.time_scale
        if faults.fail:
            live = faults.partial_data and now < expires
            return View("FAILED", faults.fail, cap, partial=live)
        if now >= expires:
            return View("EXPIRED", objects=written, completed_real=ends)
        return View("COMPLETED", objects=written, completed_real=ends, url=not faults.null_url)

    def _progress(self, moment: float, written: int) -> int:
        """Objects processed by `moment` at the configured speed, at most what the worker has written."""
        elapsed = (moment - self.created_real) * self.time_scale - self.config.created_seconds
        return max(0, min(written, math.floor(elapsed * self.config.objects_per_second)))

    def document(self, state: View | None = None) -> dict[str, Any]:
        """The BulkOperation as GraphQL shows it (UnsignedInt64 counts as strings), in `state` (default: now)."""
        state = self.view() if state is None else state
        with self.lock:
            written, roots, size = self.written, self.written_roots, self.size
        root_objects = state.objects if not self.plan.shape.node.has_connections() else (
            roots if state.objects >= written else round(roots * state.objects / max(written, 1)))
        return {
            "id": self.id,
            "status": state.status,
            "errorCode": state.error_code,
            "createdAt": utc_from_us(int(self.created_real * 1_000_000)),
            "completedAt": utc_from_us(int(state.completed_real * 1_000_000)) if state.completed_real else None,
            "objectCount": str(state.objects),
            "rootObjectCount": str(root_objects),
            "fileSize": str(size) if state.url else None,
            "url": self.service.url(self.token) if state.url else None,
            "partialDataUrl": self.service.url(self.partial_token) if state.partial else None,
            "query": self.query,
            "type": "QUERY",
        }

    def cancel(self) -> bool:
        """Start cancelling; False when the operation has already ended."""
        if self.view().status not in ACTIVE:
            return False
        with self.lock:
            if self.canceled_real is None:
                self.canceled_real = time.time()
        self.stop.set()
        return True


# -- bulkOperations: search, sort and pages ------------------------------------------------------------


@dataclass
class Listed:
    """An operation as one bulkOperations request sees it: every operation is viewed at the same moment."""

    operation: Operation
    state: View

    def key(self, sort_key: str) -> tuple[int, int]:
        """(sort value in epoch µs, operation number); an operation not completed sorts as the lowest
        COMPLETED_AT, so it comes last newest-first."""
        if sort_key == "COMPLETED_AT":
            completed = self.state.completed_real
            return (int(completed * US) if completed is not None else -1), self.operation.number
        return int(self.operation.created_real * US), self.operation.number


def listing_term(name: str, op: str, value: str, local: timezone) -> Callable[[Listed], bool] | None:
    """The predicate of one bulkOperations search term, or None for a field it does not filter on."""
    if name == "status":
        return lambda listed: listed.state.status == value.upper()
    if name == "operation_type":
        queries = value.upper() == "QUERY"  # the simulator runs no bulk mutations
        return lambda listed: queries
    if name == "created_at":
        second = parse_search_time(value, local)
        test = compare(op, second * US, (second + 1) * US)
        return lambda listed: test(int(listed.operation.created_real * US))
    if name == "id":
        digits = value.rsplit("/", 1)[-1]
        number = int(digits) if digits.isdigit() else -1
        test = compare(op, number, number + 1)
        return lambda listed: test(listed.operation.number)
    return None


def listing_filter(query: str | None, local: timezone) -> Callable[[Listed], bool]:
    """A predicate for bulkOperations' search syntax: `status` (any case, the status at this moment),
    `operation_type` (query or mutation), `created_at` at whole-second precision as shown (`>`, `<`, `>=`,
    `<=`; the shop's zone without an offset) and `id`; other fields are ignored, as Shopify ignores them."""
    checks = [check for name, op, value in search_terms(query)
              if (check := listing_term(name, op, value, local)) is not None]
    return lambda listed: all(check(listed) for check in checks)


# -- one shop's operations, and the service across shops ------------------------------------------------


class ShopBulk:
    """The bulk operations of one shop (one app): what the GraphQL resolvers call."""

    def __init__(self, service: BulkService, shop: ShopRuntime) -> None:
        self.service = service
        self.shop = shop
        self.operations: list[Operation] = []
        self.lock = threading.Lock()
        self.faults = shop.config.bulk.faults
        self.faults_left = self.faults.times

    def set_faults(self, faults: BulkFaults) -> None:
        """Apply `faults` to operations created from now on."""
        with self.lock:
            self.faults, self.faults_left = faults, faults.times

    def _faults_for(self, root_name: str) -> BulkFaults:
        faults = self.faults
        if faults.root_field is not None and faults.root_field != root_name:
            return BulkFaults()
        if faults.times > 0:
            if self.faults_left <= 0:
                return BulkFaults()
            self.faults_left -= 1
        return faults

    def run_query(self, query: str, group_objects: bool | None, api_version: str,
                  scopes: tuple[str, ...]) -> dict[str, Any]:
        """bulkOperationRunQuery: a new operation, or userErrors (an invalid query, the concurrency limit)."""
        plan, errors = check_bulk_query(query)
        if plan is None:
            return {"bulkOperation": None, "userErrors": errors}
        try:
            search_filter(plan.root_name, plan.root_args.get("query"), self.shop.data.renderer.tz)
        except GraphQLError as error:
            return {"bulkOperation": None, "userErrors": [user_error(error.message, field_path=["query"])]}
        concurrent = api_version == "unstable" or api_version >= BULK_CONCURRENT_VERSION
        config = self.shop.config.bulk
        limit = config.concurrency if config.concurrency is not None else (CONCURRENT_LIMIT if concurrent else 1)
        with self.lock:
            running = [operation for operation in self.operations if operation.view().status in ACTIVE]
            if len(running) >= limit:
                message = IN_PROGRESS.format(id=running[-1].id)
                return {"bulkOperation": None, "userErrors": [user_error(message, "OPERATION_IN_PROGRESS")]}
            faults = self._faults_for(plan.root_name)
            needed = SCOPES_NEEDED.get(plan.root_name)
            if needed and needed not in scopes:
                faults = BulkFaults(fail="ACCESS_DENIED")
            grouped = (not concurrent) if group_objects is None else group_objects
            operation = Operation(self.service, self.shop, self.service.next_number(), query, plan, grouped,
                                  faults, config)
            self.operations.append(operation)
        self.service.register(operation)
        if faults.fail != "ACCESS_DENIED":
            operation.start()
        return {"bulkOperation": operation.document(), "userErrors": []}

    def find(self, operation_id: str) -> dict[str, Any] | None:
        """bulkOperation(id:): this shop's operation, or None."""
        operation = self._operation(operation_id)
        return operation.document() if operation else None

    def current(self) -> dict[str, Any] | None:
        """currentBulkOperation: the most recent query operation, whatever its status."""
        with self.lock:
            latest = self.operations[-1] if self.operations else None
        return latest.document() if latest else None

    def listing(self, args: dict[str, Any]) -> dict[str, Any]:
        """bulkOperations: a connection of this shop's operations that match the search `query`, as they are
        now, by `sortKey` newest first (`reverse` for oldest first); `first` after `after`, or `last` before
        `before`, with keyset cursors on (sort value, id) like the record listings."""
        first, last = args.get("first"), args.get("last")
        if first is None and last is None:
            raise GraphQLError("you must provide one of first or last")
        for name in ("first", "last"):
            if args.get(name) is not None:
                page_size(args, name)
        sort_key, reverse = args.get("sortKey") or "CREATED_AT", bool(args.get("reverse"))
        matches = listing_filter(args.get("query"), self.shop.data.renderer.tz)
        now = time.time()
        with self.lock:
            operations = list(self.operations)
        found = [listed for listed in (Listed(operation, operation.view(now)) for operation in operations)
                 if matches(listed)]
        found.sort(key=lambda listed: listed.key(sort_key), reverse=not reverse)
        keys = [listed.key(sort_key) for listed in found]

        def follows(key: tuple[int, int], other: tuple[int, int]) -> bool:
            return key > other if reverse else key < other

        start, end, page = 0, len(found), 1
        if args.get("before"):
            cursor, before_page = self._cursor(args["before"], sort_key, reverse)
            end, page = sum(1 for key in keys if follows(cursor, key)), max(before_page - 1, 1)
        if args.get("after"):
            cursor, after_page = self._cursor(args["after"], sort_key, reverse)
            start, page = sum(1 for key in keys if not follows(key, cursor)), after_page + 1
        low, high = start, max(start, end)
        if first is not None:
            high = min(high, low + first)
        if last is not None:
            low = max(low, high - last)
        encode = self.service.cursors.encode
        cursors = [functools.partial(encode, {"sort": [sort_key, reverse], "v": value, "i": number, "page": page})
                   for value, number in keys[low:high]]
        nodes = [listed.operation.document(listed.state) for listed in found[low:high]]
        return connection(nodes, cursors, high < len(found), low > 0)

    def _cursor(self, cursor: str, sort_key: str, reverse: bool) -> tuple[tuple[int, int], int]:
        """The (sort value, operation number) and page of a bulkOperations cursor."""
        payload = self.service.cursors.decode(cursor)
        if payload.get("sort") != [sort_key, reverse]:
            raise GraphQLError("Invalid cursor for current pagination sort.")
        try:
            return (int(payload["v"]), int(payload["i"])), int(payload["page"])
        except (KeyError, TypeError, ValueError) as error:
            raise GraphQLError(f"Invalid cursor: {cursor}") from error

    def cancel(self, operation_id: str) -> dict[str, Any]:
        """bulkOperationCancel: CANCELING for an active operation, userErrors otherwise."""
        operation = self._operation(operation_id)
        if operation is None:
            return {"bulkOperation": None,
                    "userErrors": [{"field": ["id"], "message": "Bulk operation does not exist"}]}
        if not operation.cancel():
            document = operation.document()
            message = f"A bulk operation cannot be canceled when it is {document['status'].lower()}"
            return {"bulkOperation": document, "userErrors": [{"field": None, "message": message}]}
        return {"bulkOperation": operation.document(), "userErrors": []}

    def expire(self) -> list[str]:
        """Make every result URL of this shop expire now (as if 7 days had passed). Returns the ids."""
        now = time.time()
        with self.lock:
            operations = list(self.operations)
        for operation in operations:
            with operation.lock:
                operation.expired_real = now
        return [operation.id for operation in operations]

    def documents(self) -> list[dict[str, Any]]:
        """Every operation of the shop, oldest first."""
        with self.lock:
            operations = list(self.operations)
        return [operation.document() for operation in operations]

    def _operation(self, operation_id: str) -> Operation | None:
        with self.lock:
            return next((operation for operation in self.operations if operation.id == operation_id), None)


@dataclass
class Download:
    """What to send for one request of a result URL: an error body, or `length` bytes of a file from
    `start`; `drop_after` > 0 resets the connection after that many bytes."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    path: str | None = None
    start: int = 0
    length: int = 0
    drop_after: int = 0
    shop: ShopRuntime | None = None
    content_type: str = "application/xml; charset=UTF-8"


class BulkService:
    """Bulk operations of every shop of one simulator, their result files and download URLs."""

    def __init__(self, time_scale: float, base_url: Callable[[], str], cursors: Any) -> None:
        self.time_scale = time_scale
        self.base_url = base_url
        self.cursors = cursors
        self._secret = secrets.token_bytes(16)
        self._directory: str | None = None
        self._number = FIRST_OPERATION_NUMBER
        self._files: dict[str, tuple[Operation, bool]] = {}
        self._shops: dict[str, ShopBulk] = {}
        self._lock = threading.Lock()
        # Called with (shop, operation) for every operation created: the webhooks watch it for bulk_operations/finish.
        self.listeners: list[Callable[[ShopRuntime, Operation], None]] = []

    def shop(self, shop: ShopRuntime) -> ShopBulk:
        """The bulk operations of `shop`."""
        with self._lock:
            if shop.name not in self._shops:
                self._shops[shop.name] = ShopBulk(self, shop)
            return self._shops[shop.name]

    def directory(self) -> str:
        """Where result files are written (created on first use, removed by close)."""
        with self._lock:
            if self._directory is None:
                self._directory = tempfile.mkdtemp(prefix="shopify-simulator-bulk-")
            return self._directory

    def next_number(self) -> int:
        with self._lock:
            self._number += 1
            return self._number

    def register(self, operation: Operation) -> None:
        with self._lock:
            self._files[operation.token] = (operation, False)
            self._files[operation.partial_token] = (operation, True)
        for listener in self.listeners:
            listener(operation.shop, operation)

    def _signature(self, token: str) -> str:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, token: str) -> str:
        """The signed download URL of a result file (no Shopify token needed, like a signed GCS URL)."""
        return f"{self.base_url()}/bulk/{token}.jsonl?signature={self._signature(token)}"

    def download(self, token: str, signature: str | None, range_header: str | None) -> Download:
        """The answer to GET /bulk/{token}.jsonl: 200, 206 for `Range: bytes=N-` (or N-M), 403 when the
        signature is wrong or the URL expired, 404 for no such file, 416 for a range past the end."""
        with self._lock:
            found = self._files.get(token)
        if not signature or not hmac.compare_digest(signature, self._signature(token)):
            return Download(403, {}, SIGNATURE_BODY, shop=found[0].shop if found else None)
        if found is None:
            return Download(404, {}, NO_SUCH_KEY_BODY)
        operation, partial = found
        state = operation.view()
        if state.status == "EXPIRED" or (partial and state.status == "FAILED" and not state.partial):
            return Download(403, {}, EXPIRED_BODY, shop=operation.shop)
        if not (state.partial if partial else state.url):
            return Download(404, {}, NO_SUCH_KEY_BODY, shop=operation.shop)
        with operation.lock:
            size = operation.partial_size if partial else operation.size
        start, end = 0, size - 1
        status, headers = 200, {"Accept-Ranges": "bytes", "ETag": f'"{token}"'}
        if range_header:
            parsed = parse_range(range_header, size)
            if parsed is None:
                return Download(416, {"Content-Range": f"bytes */{size}"}, b"", shop=operation.shop)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        drop_after = 0
        faults = operation.faults
        if faults.drop_download_after_bytes > 0:
            with operation.lock:
                dropped = operation.downloads_dropped.get(token, 0)
                if dropped < faults.drop_download_times:
                    operation.downloads_dropped[token] = dropped + 1
                    drop_after = faults.drop_download_after_bytes
        return Download(status, headers, path=operation.path, start=start, length=end - start + 1,
                        drop_after=drop_after, shop=operation.shop, content_type="application/jsonl")

    def close(self) -> None:
        """Stop every worker and remove the result files."""
        with self._lock:
            operations = [operation for operation, partial in self._files.values() if not partial]
            directory, self._directory = self._directory, None
            self._files.clear()
            self._shops.clear()
        for operation in operations:
            operation.stop.set()
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of `Range: bytes=N-` or `bytes=N-M` within `size`, None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or "," in spec or not first.strip().isdigit():
        return None
    start = int(first)
    end = int(last) if last.strip().isdigit() else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
