"""An HTTP proxy in front of DynamoDB Local that injects the faults real DynamoDB shows under load.

Point boto3 at `proxy.endpoint_url`. Requests are forwarded unchanged until a fault is added; then the
chosen operations get partial BatchWriteItem results (`unprocessed`), throttling (`throttle`), a
server error (`error_500`) or a connection closed without an answer (`drop`).

    with LocalDynamoDB() as ddb, DynamoFaultProxy(ddb.endpoint_url) as proxy:
        proxy.add_fault("unprocessed", keep=10, count=1)
        client = boto3.client("dynamodb", endpoint_url=proxy.endpoint_url, ...)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

UNPROCESSED = "unprocessed"
THROTTLE = "throttle"
ERROR_500 = "error_500"
DROP = "drop"
FAULT_KINDS = (UNPROCESSED, THROTTLE, ERROR_500, DROP)
ANY_OPERATION = "*"

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
UPSTREAM_TIMEOUT = 30.0

# The exact bodies DynamoDB sends; botocore reads the error code after the '#'.
_ERROR_REPLIES: dict[str, tuple[int, dict[str, str]]] = {
    THROTTLE: (400, {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    }),
    ERROR_500: (500, {
        "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
        "message": "Internal server error",
    }),
}

# Headers that describe one hop, or that the proxy recomputes for the body it actually sends.
_NOT_COPIED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "x-amz-crc32",
})


@dataclass
class FaultRule:
    """One fault for one operation: on the next `count` matching requests, each with `probability`,
    or (both None) on every matching request until cleared. `applied` counts how often it fired."""

    kind: str
    operation: str = "BatchWriteItem"
    count: int | None = None
    probability: float | None = None
    keep: int = 0
    keep_fraction: float | None = None
    applied: int = 0

    def matches(self, operation: str) -> bool:
        return self.operation in (operation, ANY_OPERATION) and not self.exhausted

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.applied >= self.count

    def writes_to_keep(self, total: int) -> int:
        """How many of `total` write requests an `unprocessed` fault forwards to DynamoDB."""
        if self.keep_fraction is not None:
            return int(total * self.keep_fraction)
        return min(self.keep, total)


@dataclass
class OperationStats:
    """What the proxy saw for one operation. Items are BatchWriteItem write requests."""

    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    items_forwarded: int = 0
    items_unprocessed: int = 0


@dataclass(frozen=True)
class ProxiedRequest:
    """One request in arrival order: its operation, the fault applied (None: none) and the status
    sent (None: the connection was dropped; 502: DynamoDB Local did not answer)."""

    operation: str
    fault: str | None
    status: int | None


class DynamoFaultProxy:
    """A fault-injecting HTTP proxy for DynamoDB's JSON protocol on a free loopback port.

    Faults are added and cleared at run time from any thread. Rules are tried in the order added;
    the first one that matches the request's operation and fires is applied.
    """

    def __init__(self, target_url: str, seed: int = 0) -> None:
        target = urlsplit(target_url)
        if target.scheme != "http" or not target.hostname:
            raise ValueError(f"target_url must be an http:// URL of DynamoDB Local, got {target_url!r}")
        self.target_url = target_url
        self._target = (target.hostname, target.port or 80)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._stats: dict[str, OperationStats] = {}
        self._log: list[ProxiedRequest] = []
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DynamoFaultProxy:
        """Listen on a free port on 127.0.0.1 and serve in a background thread; return self."""
        if self._server is not None:
            return self
        self._server = _ProxyServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="dynamo-fault-proxy", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> DynamoFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(
        self,
        kind: str,
        operation: str = "BatchWriteItem",
        count: int | None = None,
        probability: float | None = None,
        keep: int = 0,
        keep_fraction: float | None = None,
    ) -> FaultRule:
        """Add a fault rule after the existing ones and return it.

        kind: one of FAULT_KINDS. operation: a DynamoDB operation name, or "*" for all.
        count: apply to at most this many matching requests (None: no limit).
        probability: apply to each matching request with this chance, drawn from the proxy's seeded
        random (None: always). keep / keep_fraction: for `unprocessed`, how many write requests (or
        what fraction, rounded down) of a BatchWriteItem are forwarded; the rest come back unprocessed.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        if kind == UNPROCESSED and operation != "BatchWriteItem":
            raise ValueError("the `unprocessed` fault only applies to BatchWriteItem")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0 or None, got {count}")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {probability}")
        if keep < 0 or (keep_fraction is not None and not 0.0 <= keep_fraction <= 1.0):
            raise ValueError("keep must be >= 0 and keep_fraction between 0 and 1")
        rule = FaultRule(kind, operation, count, probability, keep, keep_fraction)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        """Remove every fault rule; from now on requests are forwarded unchanged."""
        with self._lock:
            self._rules.clear()

    @property
    def stats(self) -> dict[str, OperationStats]:
        """A snapshot of the counters, keyed by operation name."""
        with self._lock:
            return {op: replace(s, faults=Counter(s.faults)) for op, s in self._stats.items()}

    @property
    def log(self) -> list[ProxiedRequest]:
        """A snapshot of every request seen, in arrival order."""
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()
            self._log.clear()

    def _choose_fault(self, operation: str) -> FaultRule | None:
        with self._lock:
            stats = self._stats.setdefault(operation, OperationStats())
            stats.requests += 1
            for rule in self._rules:
                if not rule.matches(operation):
                    continue
                if rule.probability is not None and self._random.random() >= rule.probability:
                    continue
                rule.applied += 1
                stats.faults[rule.kind] += 1
                return rule
        return None

    def _record(self, operation: str, fault: str | None, status: int | None,
                forwarded: int = 0, unprocessed: int = 0) -> None:
        with self._lock:
            stats = self._stats[operation]
            stats.items_forwarded += forwarded
            stats.items_unprocessed += unprocessed
            self._log.append(ProxiedRequest(operation, fault, status))

    def _handle(self, handler: _Handler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        operation = (handler.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        rule = self._choose_fault(operation)
        kind = rule.kind if rule else None
        if kind == DROP:
            handler.close_connection = True
            self._record(operation, kind, None)
            return
        if kind in _ERROR_REPLIES:
            status, payload = _ERROR_REPLIES[kind]
            self._record(operation, kind, status)
            _reply(handler, status, [("Content-Type", JSON_CONTENT_TYPE)], json.dumps(payload).encode())
            return
        try:
            if kind == UNPROCESSED:
                status, headers, reply, forwarded = self._forward_part(handler, body, rule)
            else:
                status, headers, reply = self._forward(handler, body)
                forwarded = _count_writes(body) if operation == "BatchWriteItem" else 0
        except OSError as error:
            self._record(operation, kind, 502)
            _reply(handler, 502, [("Content-Type", "text/plain")],
                   f"DynamoDB Local at {self.target_url} did not answer: {error}".encode())
            return
        batch_written = operation == "BatchWriteItem" and status == 200
        forwarded = forwarded if batch_written else 0
        unprocessed = _count_writes(reply, key="UnprocessedItems") if batch_written else 0
        # Recorded before the reply goes out, so a client that has its answer also finds it in the log.
        self._record(operation, kind, status, forwarded, unprocessed)
        _reply(handler, status, headers, reply)

    def _forward(self, handler: _Handler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _NOT_COPIED}
        headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(*self._target, timeout=UPSTREAM_TIMEOUT)
        try:
            connection.request(handler.command, handler.path, body, headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _forward_part(
        self, handler: _Handler, body: bytes, rule: FaultRule,
    ) -> tuple[int, list[tuple[str, str]], bytes, int]:
        """Forward the first write requests of a BatchWriteItem, hand back the rest as unprocessed.

        Returns status, headers, body and how many write requests were forwarded.
        """
        request = json.loads(body)
        writes = [(table, write) for table, items in request["RequestItems"].items() for write in items]
        kept = rule.writes_to_keep(len(writes))
        result: dict = {}
        status, headers = 200, [("Content-Type", JSON_CONTENT_TYPE)]
        if kept:
            request["RequestItems"] = _group_by_table(writes[:kept])
            # The rewritten body no longer matches the SigV4 signature; DynamoDB Local does not check it.
            status, headers, reply = self._forward(handler, json.dumps(request).encode())
            if status != 200:
                return status, headers, reply, 0
            result = json.loads(reply)
        unprocessed = result.get("UnprocessedItems") or {}
        for table, write in writes[kept:]:
            unprocessed.setdefault(table, []).append(write)
        result["UnprocessedItems"] = unprocessed
        return status, headers, json.dumps(result).encode(), kept


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler], proxy: DynamoFaultProxy) -> None:
        self.proxy = proxy
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        """End kept-alive client connections, which would otherwise still be served after stop()."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so botocore keeps its pooled connections, as it does with DynamoDB.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each small answer waits ~40 ms for the client's delayed ACK
    server: _ProxyServer

    def do_POST(self) -> None:  # the name http.server dispatches to
        self.server.proxy._handle(self)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        """Silent: one line per request would bury the test output."""


def _reply(handler: _Handler, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    handler.send_response_only(status)
    for name, value in headers:
        if name.lower() not in _NOT_COPIED:
            handler.send_header(name, value)
    # botocore rejects a DynamoDB response whose body does not match x-amz-crc32.
    handler.send_header("x-amz-crc32", str(zlib.crc32(body)))
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _count_writes(body: bytes, key: str = "RequestItems") -> int:
    try:
        tables = json.loads(body).get(key) or {}
    except (ValueError, AttributeError):
        return 0
    return sum(len(items) for items in tables.values())


def _group_by_table(writes: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for table, write in writes:
        grouped.setdefault(table, []).append(write)
    return grouped
