"""A hostile HTTP server for tests: a "shop" that is malicious or broken in exactly the way a test scripts.

By default it is a transparent proxy in front of an upstream (usually the Shopify simulator), so a client
pointed at it works normally; a rule then picks individual requests to answer differently: a slow drip, a
body of gigabytes, a redirect to another host, a lying rate-limit header, a request held until the test
has changed the upstream, or a connection dropped without an answer.

    with Simulator([ShopConfig("acme", "shpat_acme", orders=300)], time_scale=10) as sim, \\
            HostileServer(upstream=sim.base_url) as server:
        server.script(rule_for("/orders.json", Trickle(interval=0.5), times=1))
        client = make_client(f"{server.url}/shops/acme")   # the first orders page now never ends
        ...
        assert server.seen[0].headers["X-Shopify-Access-Token"] == "shpat_acme"

Stdlib only (http.server + http.client + zlib), IPv4 loopback only. 127.0.0.2 works as "another host"
on Linux without setup. Each action applies to one request; everything is thread-safe.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = [
    "Action", "Drop", "Hold", "HostileServer", "Huge", "Proxy", "Redirect", "Respond", "Rule", "Seen",
    "Trickle", "chain", "huge_body_pieces", "rule_for",
]

PIECE = 1024 * 1024
"""Huge bodies are generated and sent in pieces of at most this many (uncompressed) bytes."""

UPSTREAM_TIMEOUT = 30.0

# Headers that describe one hop, or that the server recomputes for the body it actually sends.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length",
})

# Huge's body: a valid JSON document of exactly the requested size (see huge_body_pieces).
_HUGE_PREFIX = b'{"orders":['
_HUGE_SUFFIX = b"]}"
_HUGE_ORDER = (b'{"id":4500000000001,"name":"#1001","email":"filler@example.com","total_price":"0.00",'
               b'"financial_status":"paid","line_items":[]}')
_HUGE_MIN_SIZE = len(_HUGE_PREFIX) + len(_HUGE_SUFFIX)

_LINK_TARGET = re.compile(r"<([^>]*)>")


# -- what the server saw ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request the server received, recorded before any rule runs."""

    method: str
    path: str
    """Path and query exactly as sent on the request line."""
    headers: dict[str, str]
    """As received, names in the case the client sent them (a repeated header keeps its last value)."""
    number: int
    """1-based: the n-th request this server has received."""
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header's value by case-insensitive name."""
        lowered = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == lowered), default)


# -- actions ---------------------------------------------------------------------------------------


@dataclass
class Respond:
    """This exact answer. Content-Length is len(body) unless `headers` sets one: then that (possibly
    lying) value is sent and the connection is closed after the body, since its framing can't be trusted.
    No Content-Type, Date or Server header is added."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Redirect:
    """A redirect to `location` (any URL: another host, another scheme, a loop back to this server)."""

    location: str
    status: int = 302
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Proxy:
    """Proxy to the upstream as the default does, then set `headers` on the answer (replacing any of the
    same name, case-insensitively) and drop `drop_headers`. Runs after the Link rewrite, so a fake Link
    given here is sent exactly as written."""

    headers: dict[str, str] = field(default_factory=dict)
    drop_headers: tuple[str, ...] = ()


@dataclass
class Trickle:
    """An answer that is always arriving but never done: the head at once (or, with trickle_headers, the
    head itself `chunk` bytes per `interval`), then the body `chunk` bytes per `interval`. No single read
    waits longer than `interval`, so only a total deadline on the client catches it.

    content_length=False sends the body chunked (one chunk frame per piece). Content-Type defaults to
    application/json. The connection is closed afterwards; a client that hangs up early ends it quietly.
    """

    status: int = 200
    body: bytes = b'{"orders":[]}'
    interval: float = 0.5
    chunk: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True
    trickle_headers: bool = False

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.interval < 0:
            raise ValueError("Trickle needs chunk >= 1 and interval >= 0")


@dataclass
class Huge:
    """A 200 whose JSON body ({"orders":[...]}) is `size` bytes, streamed as fast as the client reads.

    Never held in memory: generated in pieces of at most 1 MiB. content_length=False sends it chunked.
    gzip=True sends Content-Encoding: gzip of a body that decompresses to `size` bytes (a compression
    bomb, a few hundred times smaller on the wire); Content-Length is then the exact compressed length.
    The connection is closed afterwards.
    """

    size: int
    content_length: bool = True
    gzip: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size < _HUGE_MIN_SIZE:
            raise ValueError(f"Huge needs size >= {_HUGE_MIN_SIZE} (the smallest body is {{\"orders\":[]}})")


@dataclass(eq=False)
class Hold:
    """Park the request until `release` is set (or `timeout` seconds pass), then apply `then`; None means
    proxy to the upstream *then*, so the answer shows the upstream's state at release time.

    `arrived` is set as soon as a request starts waiting, so a test can wait for it, change the world,
    and set `release`. If the server stops first, the held connection is closed without an answer.
    """

    release: threading.Event
    then: Action | None = None
    timeout: float = 60.0
    arrived: threading.Event = field(default_factory=threading.Event)


@dataclass
class Drop:
    """Close the connection without answering: a FIN (the client sees the server hang up), or with
    reset=True a TCP RST (the client sees ConnectionResetError)."""

    reset: bool = False


Action = Respond | Redirect | Proxy | Trickle | Huge | Hold | Drop
Rule = Callable[[Seen], "Action | None"]


# -- rules -----------------------------------------------------------------------------------------


def rule_for(path_contains: str, action: Action, times: int | None = 1, method: str | None = None) -> Rule:
    """A rule applying `action` to the first `times` requests (None: all) whose path contains
    `path_contains` (and whose method is `method`, if given); None for every other request."""
    lock = threading.Lock()
    applied = 0

    def rule(seen: Seen) -> Action | None:
        nonlocal applied
        if path_contains not in seen.path or (method is not None and seen.method != method.upper()):
            return None
        # Rules run on many server threads at once: count and decide under one lock.
        with lock:
            if times is not None and applied >= times:
                return None
            applied += 1
        return action

    return rule


def chain(*rules: Rule) -> Rule:
    """A rule returning the first non-None action of `rules`, tried in order."""

    def rule(seen: Seen) -> Action | None:
        for candidate in rules:
            action = candidate(seen)
            if action is not None:
                return action
        return None

    return rule


# -- the server ------------------------------------------------------------------------------------


class HostileServer:
    """A scriptable HTTP/1.1 server on `host` (default 127.0.0.1) and a free port (or `port`).

    Requests without a rule, or whose rule returns None, are proxied to `upstream` (a base URL such as
    "http://127.0.0.1:8123", no path) with absolute Link URLs pointing back here; with no upstream they
    get a 404. Normal answers keep the connection alive; Trickle, Huge and Drop close it.
    """

    def __init__(self, host: str = "127.0.0.1", upstream: str | None = None, port: int = 0) -> None:
        self.host = host
        self.port = port
        self.upstream = upstream.rstrip("/") if upstream else None
        self._upstream: tuple[str, int] | None = None
        if self.upstream is not None:
            split = urlsplit(self.upstream)
            if split.scheme != "http" or not split.hostname or split.path or split.query:
                raise ValueError(f"upstream must be a path-less http:// base URL, got {upstream!r}; "
                                 "the client's paths (e.g. /shops/acme/...) are proxied as they are")
            self._upstream = (split.hostname, split.port or 80)
        self.seen: list[Seen] = []
        # Exceptions raised by rules or by this module's code (not client hang-ups): tests assert it is empty.
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._rule: Rule | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> HostileServer:
        """Listen and serve on a daemon thread; returns self."""
        if self._server is not None:
            return self
        self.stopping.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        # A short poll interval so stop() returns quickly.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"hostile-server-{self.host}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop at once: held requests are released (and dropped), trickles and streams cut off."""
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        # Kept-alive and mid-answer connections would otherwise live on in their daemon threads.
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """E.g. "http://127.0.0.2:40123" (with port=0 the port is known once started; it stays after stop)."""
        if self.port == 0:
            raise RuntimeError("the port is not known yet; call start() or use the server as a context manager")
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections currently open on this server (kept alive, or mid-answer)."""
        return self._server.open_connections() if self._server is not None else 0

    # -- scripting ---------------------------------------------------------------------------------

    def script(self, rule: Rule | None) -> None:
        """Decide each later request with `rule` (replacing the current one); None restores the default."""
        with self._lock:
            self._rule = rule

    def requests_to(self, path_contains: str) -> list[Seen]:
        """The requests seen so far whose path contains `path_contains`."""
        with self._lock:
            return [seen for seen in self.seen if path_contains in seen.path]

    # -- called from handler threads ---------------------------------------------------------------

    def _arrived(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[Seen, Rule | None]:
        with self._lock:
            seen = Seen(method, path, headers, len(self.seen) + 1, body)
            self.seen.append(seen)
            return seen, self._rule

    def _error(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)

    def _forward(self, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request to the upstream on a fresh connection; return status, reason, headers, body."""
        assert self._upstream is not None
        hostname, port = self._upstream
        connection = http.client.HTTPConnection(hostname, port, timeout=UPSTREAM_TIMEOUT)
        try:
            # putrequest rather than request(): it adds no Accept-Encoding of its own, so headers go as sent.
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", f"{hostname}:{port}")
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "host":
                    connection.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def _rewrite_link(self, value: str) -> str:
        """Point every URL in a Link header that is on the upstream's origin at this server instead."""

        def replace(match: re.Match[str]) -> str:
            split = urlsplit(match.group(1))
            if split.scheme == "http" and (split.hostname, split.port or 80) == self._upstream:
                return f"<{split._replace(netloc=f'{self.host}:{self.port}').geturl()}>"
            return match.group(0)

        return _LINK_TARGET.sub(replace, value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # server_close() must not wait for a handler stuck in a Trickle or Hold.
    block_on_close = False
    # The default backlog of 5 makes a burst of parallel connects wait a second for a SYN retry.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[_Handler], hostile: HostileServer) -> None:
        self.hostile = hostile
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(host): a reverse DNS lookup that can stall for
        # seconds on 127.0.0.2 where DNS is unreachable. Nothing here needs server_name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def close_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        # Quiet (the default prints a traceback to stderr); a client hanging up is not an error.
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, OSError):
            self.hostile._error(error)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients keep their pooled connections, as they do with Shopify.
    protocol_version = "HTTP/1.1"
    # Heads and bodies go out in separate writes; with Nagle on, a keep-alive client waits ~40 ms each.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        """Silent: one line per request would bury the test output."""

    def _handle(self) -> None:
        hostile = self.server.hostile
        body = self._read_body()
        seen, rule = hostile._arrived(self.command, self.path, dict(self.headers.items()), body)
        try:
            action = rule(seen) if rule is not None else None
        except Exception as error:  # a broken rule must fail the test, not hang the client
            hostile._error(error)
            reply = json.dumps({"errors": f"hostile server rule failed: {error!r}"}).encode()
            self._send(500, [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))], reply)
            return
        try:
            self._apply(action, seen)
        except OSError:
            # The client hung up (BrokenPipe, ConnectionReset) or stop() shut the socket: nothing to answer.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    # -- reading -----------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        """The whole request body; read even when unused, or its bytes would be parsed as the next request."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- answering ---------------------------------------------------------------------------------

    def _apply(self, action: Action | None, seen: Seen) -> None:
        if action is None:
            self._proxy(seen, Proxy())
        elif isinstance(action, Respond):
            headers = list(action.headers.items())
            lying = _has(action.headers, "Content-Length")
            if not lying:
                headers.append(("Content-Length", str(len(action.body))))
            self._send(action.status, headers, action.body)
            if lying:
                self.close_connection = True
        elif isinstance(action, Redirect):
            self._send(action.status, [("Location", action.location), *action.headers.items(),
                                       ("Content-Length", "0")], b"")
        elif isinstance(action, Proxy):
            self._proxy(seen, action)
        elif isinstance(action, Trickle):
            self._trickle(action)
        elif isinstance(action, Huge):
            self._huge(action)
        elif isinstance(action, Hold):
            self._hold(action, seen)
        elif isinstance(action, Drop):
            self._drop(action.reset)
        else:
            raise TypeError(f"a rule returned {action!r}, which is not an action")

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        # send_response_only: no Date or Server header of our own, the answer is exactly what was asked.
        self.send_response_only(status, _reason(status))
        for name, value in headers:
            self.send_header(name, value)  # also honours a scripted "Connection: close"
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _proxy(self, seen: Seen, action: Proxy) -> None:
        hostile = self.server.hostile
        if hostile._upstream is None:
            reply = b'{"errors":"Not Found"}'
            self._send(404, [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))], reply)
            return
        try:
            status, _, upstream_headers, body = hostile._forward(seen.method, seen.path, seen.headers, seen.body)
        except (OSError, http.client.HTTPException) as error:
            reply = json.dumps({"errors": f"upstream {hostile.upstream} did not answer: {error!r}"}).encode()
            self._send(502, [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))], reply)
            return
        headers: list[tuple[str, str]] = []
        for name, value in upstream_headers:
            lowered = name.lower()
            # A HEAD answer has no body to measure: keep the upstream's Content-Length.
            if lowered in _HOP_BY_HOP and not (lowered == "content-length" and seen.method == "HEAD"):
                continue
            headers.append((name, hostile._rewrite_link(value) if lowered == "link" else value))
        replaced = {name.lower() for name in action.headers} | {name.lower() for name in action.drop_headers}
        headers = [(name, value) for name, value in headers if name.lower() not in replaced]
        headers.extend(action.headers.items())
        if seen.method != "HEAD":
            headers.append(("Content-Length", str(len(body))))
        self._send(status, headers, body)

    def _trickle(self, action: Trickle) -> None:
        self.close_connection = True
        headers = dict(action.headers)
        if not _has(headers, "Content-Type"):
            headers["Content-Type"] = "application/json"
        if action.content_length:
            headers["Content-Length"] = str(len(action.body))
        else:
            headers["Transfer-Encoding"] = "chunked"
        headers["Connection"] = "close"
        head = _head(action.status, headers)
        stopping = self.server.hostile.stopping
        pieces = _split(head, action.chunk) if action.trickle_headers else [head]
        body = _split(action.body, action.chunk)
        if not action.content_length:
            body = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in body]
        for index, piece in enumerate([*pieces, *body]):
            # The head goes out at once; every later piece waits one interval (stop() cuts it short).
            if index > 0 and stopping.wait(action.interval):
                return
            self.wfile.write(piece)
        if not action.content_length:
            self.wfile.write(b"0\r\n\r\n")

    def _huge(self, action: Huge) -> None:
        self.close_connection = True
        headers = dict(action.headers)
        if not _has(headers, "Content-Type"):
            headers["Content-Type"] = "application/json"
        plan = _huge_plan(action.size)
        if action.gzip:
            headers["Content-Encoding"] = "gzip"
            compressed = _GzipPlan(plan)
            length, pieces = compressed.length, compressed.pieces()
        else:
            length, pieces = action.size, _expand(plan)
        if action.content_length:
            headers["Content-Length"] = str(length)
        else:
            headers["Transfer-Encoding"] = "chunked"
        headers["Connection"] = "close"
        self.wfile.write(_head(200, headers))
        stopping = self.server.hostile.stopping
        for piece in pieces:
            if stopping.is_set():
                return
            if not action.content_length:
                self.wfile.write(b"%x\r\n" % len(piece))
            self.wfile.write(piece)
            if not action.content_length:
                self.wfile.write(b"\r\n")
        if not action.content_length:
            self.wfile.write(b"0\r\n\r\n")

    def _hold(self, action: Hold, seen: Seen) -> None:
        stopping = self.server.hostile.stopping
        deadline = time.monotonic() + action.timeout
        action.arrived.set()
        # One thread cannot wait on two events: poll the release and stop() in short slices.
        while not action.release.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if stopping.is_set():
                self._drop(reset=False)
                return
            if time.monotonic() >= deadline:
                break
        if stopping.is_set():
            self._drop(reset=False)
            return
        # Decided only now, so a proxied answer reflects the upstream as it is at release time.
        self._apply(action.then, seen)

    def _drop(self, reset: bool) -> None:
        self.close_connection = True
        if reset:
            # Linger 0: close() sends RST instead of FIN.
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()


# -- helpers ---------------------------------------------------------------------------------------


def _has(headers: dict[str, str], name: str) -> bool:
    return any(key.lower() == name.lower() for key in headers)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: dict[str, str]) -> bytes:
    """A response head as bytes, written by hand so it can be trickled."""
    lines = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


def _huge_plan(size: int) -> list[tuple[bytes, int]]:
    """Huge's body as (piece, repeat) pairs: concatenated in order they give exactly `size` bytes.

    The body is valid JSON: {"orders":[ order ,order ,order ... <spaces> ]}, whitespace padding to the
    byte. The repeated middle piece is one ~1 MiB block, built once and sent as often as needed.
    """
    fill = size - _HUGE_MIN_SIZE
    if fill < len(_HUGE_ORDER):
        return [(_HUGE_PREFIX + b" " * fill + _HUGE_SUFFIX, 1)]
    unit = b"," + _HUGE_ORDER
    units, spaces = divmod(fill - len(_HUGE_ORDER), len(unit))
    per_block = PIECE // len(unit)
    blocks, rest = divmod(units, per_block)
    plan = [(_HUGE_PREFIX + _HUGE_ORDER, 1), (unit * per_block, blocks), (unit * rest + b" " * spaces, 1)]
    plan.append((_HUGE_SUFFIX, 1))
    return [(piece, count) for piece, count in plan if piece and count]


def _expand(plan: list[tuple[bytes, int]]) -> Iterator[bytes]:
    for piece, count in plan:
        for _ in range(count):
            yield piece


def huge_body_pieces(size: int) -> Iterator[bytes]:
    """The uncompressed body Huge(size) sends, in pieces of at most 1 MiB (for checking what a client got)."""
    Huge(size)  # validates size
    return _expand(_huge_plan(size))


class _GzipPlan:
    """A gzip stream of a Huge plan whose length is known before the first byte is sent.

    Each distinct piece is deflated once by a fresh compressor ending in a full flush: with no history
    to refer back to, the compressed piece can be repeated as is, so a 10 GiB bomb costs a few ms of
    compression and its Content-Length is exact. Only the CRC is computed while streaming.
    """

    _HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, mtime 0, best compression
    _FINAL = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)  # an empty last block

    def __init__(self, plan: list[tuple[bytes, int]]) -> None:
        self.plan = [(piece, _deflate(piece), count) for piece, count in plan]
        self.size = sum(len(piece) * count for piece, count in plan)
        self.length = (len(self._HEADER) + sum(len(compressed) * count for _, compressed, count in self.plan)
                       + len(self._FINAL) + 8)

    def pieces(self) -> Iterator[bytes]:
        yield self._HEADER
        crc = 0
        for piece, compressed, count in self.plan:
            for _ in range(count):
                crc = zlib.crc32(piece, crc)
                yield compressed
        yield self._FINAL + struct.pack("<II", crc, self.size & 0xFFFFFFFF)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
