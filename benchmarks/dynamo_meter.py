"""A metering HTTP proxy in front of DynamoDB Local: the capacity units every process behind it consumed.

Each request gets `ReturnConsumedCapacity: TOTAL` added (unless it asked itself), and the `ConsumedCapacity`
DynamoDB Local computes (item sizes rounded up to 1 KB per write unit, 4 KB per read unit; transactions
doubled) is summed per operation. Point a process at `meter.endpoint_url` instead of DynamoDB Local's.

What DynamoDB bills and no answer reports: a write refused by its condition (ConditionalCheckFailed) is
counted as 1 write unit (AWS charges the item's size, at least 1); a cancelled transaction as 0.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_NOT_COPIED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
METERED = WRITES | {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}


class CapacityMeter:
    """The proxy, on a free loopback port, for the `with` block; `totals()` reads the sums so far."""

    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self._target = (target.hostname, target.port or 80)
        self._lock = threading.Lock()
        self.write_units: Counter[str] = Counter()
        self.read_units: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.refused_writes = 0
        self._local = threading.local()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.meter = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="capacity-meter")

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> CapacityMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.write_units.clear()
            self.read_units.clear()
            self.requests.clear()
            self.refused_writes = 0

    def totals(self) -> dict:
        """{write_units, read_units, refused_writes, requests} summed over every operation since reset()."""
        with self._lock:
            return {"write_units": sum(self.write_units.values()), "read_units": sum(self.read_units.values()),
                    "refused_writes": self.refused_writes, "requests": sum(self.requests.values()),
                    "write_units_by_operation": dict(self.write_units)}

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = http.client.HTTPConnection(*self._target, timeout=60)
        return self._local.connection

    def _forward(self, handler: _Handler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        operation = (handler.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        if operation in METERED:
            request = json.loads(body)
            request.setdefault("ReturnConsumedCapacity", "TOTAL")
            body = json.dumps(request).encode()  # DynamoDB Local does not check the signature
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _NOT_COPIED}
        headers["Content-Length"] = str(len(body))
        try:
            connection = self._connection()
            connection.request("POST", handler.path, body, headers)
            response = connection.getresponse()
            status, reply_headers, reply = response.status, response.getheaders(), response.read()
        except (OSError, http.client.HTTPException):
            self._local.connection = None
            raise
        self._count(operation, status, reply)
        handler.send_response_only(status)
        for name, value in reply_headers:
            if name.lower() not in _NOT_COPIED:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)

    def _count(self, operation: str, status: int, reply: bytes) -> None:
        if operation not in METERED:
            return
        units = 0.0
        refused = False
        try:
            answer = json.loads(reply) if reply else {}
        except ValueError:
            answer = {}
        if status == 200:
            consumed = answer.get("ConsumedCapacity") or []
            for entry in consumed if isinstance(consumed, list) else [consumed]:
                units += float(entry.get("CapacityUnits") or 0)
        else:
            refused = operation in WRITES and "ConditionalCheckFailed" in str(answer.get("__type", ""))
        with self._lock:
            self.requests[operation] += 1
            if refused:
                self.refused_writes += 1
                self.write_units[operation] += 1
            elif operation in WRITES:
                self.write_units[operation] += units
            else:
                self.read_units[operation] += units


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # botocore keeps its connections, as with DynamoDB
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # the name http.server dispatches to
        self.server.meter._forward(self)

    def log_message(self, *args: object) -> None:
        """Silent."""
