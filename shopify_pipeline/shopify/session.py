"""The HTTP session of one shop: a deadline per request, no redirects, a cap on what an answer may weigh.

- **Deadline.** A socket timeout bounds each read, so a server that trickles a byte every few seconds
  could hold a request for hours. Every request attempt here arms a watchdog when it starts; at the
  deadline the watchdog shuts the connection's socket down, which ends whatever read is waiting
  (connect is bounded by its own timeout). urllib3 then retries the attempt like any read failure.
- **No redirects.** requests strips `Authorization` when a redirect changes host, but not Shopify's
  `X-Shopify-Access-Token`: following a redirect would hand the token to whoever the Location names.
  Nothing is followed (nor read: requests' redirect handling is bypassed); the caller turns a 3xx into
  an error.
- **Size.** A declared Content-Length above the cap is refused before the body is read, and an undeclared
  body is read in pieces and abandoned as soon as it passes the cap (gzip is counted decompressed).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

_READ_PIECE = 64 * 1024
_SMALL_BODY = 4 * 1024 * 1024  # a 250-order page is 1-4 MB
_LARGE_BODY = threading.Lock()


class DeadlineExceeded(Exception):
    """A request attempt outlived its deadline; `in_body` when the headers had come (urllib3 retried the
    earlier phases already; a body is not retried by urllib3)."""

    def __init__(self, seconds: float, in_body: bool) -> None:
        super().__init__(seconds)
        self.in_body = in_body


class IncompleteBody(Exception):
    """The connection failed while the body was being read (urllib3 does not retry this phase)."""


class TooLarge(Exception):
    """An answer larger than the session's cap; `declared` says whether Content-Length announced it."""

    def __init__(self, size: int, declared: bool) -> None:
        super().__init__(size)
        self.size = size
        self.declared = declared


class _Attempt:
    """One request attempt on one connection: its watchdog, and whether the deadline cut it."""

    def __init__(self, connection: _DeadlineMixin, seconds: float) -> None:
        self.connection = connection
        self.expired = False
        self.timer = threading.Timer(seconds, connection._expire, args=(self,))
        self.timer.daemon = True

    def disarm(self) -> None:
        """End this attempt's watchdog; a no-op for the connection's later attempts (other threads')."""
        self.timer.cancel()
        self.connection._end(self)


_current = threading.local()  # the attempt of this thread's request in flight (urllib3 runs in the caller)


class _DeadlineMixin:
    """Arms a watchdog at the start of every request sent on this connection."""

    deadline_seconds: float = 30.0
    _attempt: _Attempt | None = None
    _watched_sock: socket.socket | None = None

    def request(self, *args, **kwargs):  # noqa: ANN201 - urllib3's signature
        previous = getattr(_current, "attempt", None)
        if previous is not None:
            previous.disarm()  # urllib3 retries in this thread: this thread's earlier attempt is over
        attempt = _Attempt(self, self.deadline_seconds)
        self._attempt = attempt
        _current.attempt = attempt
        attempt.timer.start()
        return super().request(*args, **kwargs)

    def connect(self) -> None:
        super().connect()
        self._watched_sock = self.sock

    def _end(self, attempt: _Attempt) -> None:
        if self._attempt is attempt:
            self._attempt = None

    def _expire(self, attempt: _Attempt) -> None:
        if self._attempt is not attempt:
            return  # that attempt is over: the connection may be serving another thread's request now
        attempt.expired = True
        # http.client drops `sock` when the answer says "Connection: close" (the response keeps reading
        # from it), so the socket is the one remembered at connect time.
        sock = getattr(self, "sock", None) or self._watched_sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: it wakes a read blocked in another thread, TLS or not.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections carry the deadline watchdog."""

    def __init__(self, deadline_seconds: float, retries: Retry, pool_maxsize: int) -> None:
        self._deadline_seconds = deadline_seconds
        super().__init__(max_retries=retries, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        deadline = self._deadline_seconds
        http = type("ShopHTTPConnection", (_DeadlineHTTPConnection,), {"deadline_seconds": deadline})
        https = type("ShopHTTPSConnection", (_DeadlineHTTPSConnection,), {"deadline_seconds": deadline})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("ShopHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("ShopHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }


@dataclass
class Answer:
    """A complete HTTP answer: status, headers, the whole body, and the retries urllib3 made for it."""

    status_code: int
    headers: CaseInsensitiveDict
    content: bytes
    retries: int = 0

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class ShopSession:
    """GETs for one shop with a per-attempt deadline, no redirects and a size cap."""

    def __init__(self, headers: dict[str, str], retries: Retry, deadline_seconds: float, max_bytes: int,
                 pool_maxsize: int = 16) -> None:
        self.deadline_seconds = deadline_seconds
        self.max_bytes = max_bytes
        self._session = requests.Session()
        self._session.headers.update(headers)
        adapter = _DeadlineAdapter(deadline_seconds, retries, pool_maxsize)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def close(self) -> None:
        self._session.close()

    def get(self, url: str) -> Answer:
        """The whole answer to GET `url` (see `send`)."""
        return self.send("GET", url)

    def send(self, method: str, url: str, json_body: dict | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        """The whole answer to `method` `url` (with a JSON body); a 3xx comes back as it is, never followed.

        Raises DeadlineExceeded, TooLarge, IncompleteBody, or requests' RequestException for failures before
        the headers (after urllib3's retries).
        """
        _current.attempt = None
        connect = min(10.0, self.deadline_seconds)
        try:
            # The adapter directly: requests' redirect machinery would read a redirect's body, uncapped.
            request = self._session.prepare_request(requests.Request(method, url, json=json_body, headers=headers))
            response = self._session.get_adapter(url).send(request, stream=True,
                                                           timeout=(connect, self.deadline_seconds))
        except requests.RequestException:
            self._raise_if_expired(in_body=False)
            self._disarm()
            raise
        try:
            retries = len(getattr(getattr(response.raw, "retries", None), "history", ()) or ())
            if 300 <= response.status_code < 400:
                return Answer(response.status_code, response.headers, b"", retries)
            return Answer(response.status_code, response.headers, self._read(response), retries)
        except requests.RequestException as error:
            self._raise_if_expired(in_body=True)
            raise IncompleteBody(type(error).__name__) from None
        finally:
            response.close()
            self._disarm()

    @staticmethod
    def _disarm() -> None:
        attempt = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.disarm()
            _current.attempt = None

    def _read(self, response: requests.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(int(declared), declared=True)
        body = bytearray()
        with contextlib.ExitStack() as stack:
            holding = False
            for piece in response.iter_content(_READ_PIECE):
                body += piece
                if len(body) > self.max_bytes:
                    raise TooLarge(len(body), declared=False)
                if len(body) > _SMALL_BODY and not holding:
                    # Slices read in parallel: past a normal page's size, one body at a time per process,
                    # so that several answers near the cap never sit in memory together.
                    stack.enter_context(_LARGE_BODY)
                    holding = True
            return bytes(body)

    def _raise_if_expired(self, in_body: bool) -> None:
        attempt = getattr(_current, "attempt", None)
        if attempt is not None and attempt.expired:
            raise DeadlineExceeded(self.deadline_seconds, in_body) from None
