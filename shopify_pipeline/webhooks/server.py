"""`shopify-pipeline webhooks serve`: the HTTPS door as a local HTTP server, for development and the demo.

Every POST is one delivery: the raw body and headers go to `WebhookHandler.accept`, which checks it and
queues its events in the webhook inbox (a DynamoDB table) before the answer: 200 accepted (or already
queued), 401 bad HMAC, 404 unknown shop, 400 a body that does not fit its topic, 500 when the inbox cannot be
written (Shopify retries). Worker threads then apply the events (`InboxWorkers`), so the answer never waits
for Shopify's rate limit; events left by a stop are applied at the next start. Bodies over 4 MiB, and bodies
without a Content-Length (chunked), are refused unread; a client that stalls for 10 s is cut off. Production
puts the same handler behind a Lambda function URL or API Gateway (HTTPS) or EventBridge.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shopify_pipeline.webhooks.handler import Delivery, WebhookHandler
from shopify_pipeline.webhooks.inbox import InboxWorkers, WebhookInbox

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # Shopify's payloads are far smaller (a large order: a few hundred KB)
READ_TIMEOUT_SECONDS = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # Shopify delivers many at once; the default backlog of 5 refuses connections


class WebhookServer:
    """A threaded HTTP server on 127.0.0.1 (or `host`) and its inbox workers, for as long as the `with` block
    runs. `inbox` defaults to the engine's inbox table; `workers` apply events in parallel."""

    def __init__(self, handler: WebhookHandler, host: str = "127.0.0.1", port: int = 0, workers: int = 4,
                 inbox: WebhookInbox | None = None, sweep_seconds: float = 5.0) -> None:
        self.handler = handler
        webhook = handler
        self.inbox = inbox or WebhookInbox(handler.engine.dynamodb, handler.engine.settings.tables.webhook_inbox)
        self.workers = InboxWorkers(handler, self.inbox, workers, sweep_seconds)
        queue_in, applier = self.inbox, self.workers

        class _Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = READ_TIMEOUT_SECONDS  # a client that sends slowly (slowloris) is cut off

            def do_POST(self) -> None:  # the name http.server dispatches to
                length_header = self.headers.get("Content-Length") or ""
                if self.headers.get("Transfer-Encoding") or not length_header.isascii() or not length_header.isdigit():
                    self.close_connection = True
                    self._answer(411, {"result": "rejected", "detail": "a Content-Length is required"})
                    return
                length = int(length_header)
                if length > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._answer(413, {"result": "rejected", "detail": "body too large"})
                    return
                delivery = Delivery.from_http(dict(self.headers.items()), self.rfile.read(length))
                try:
                    outcome, queued = webhook.accept(delivery, queue_in)
                except Exception as error:  # noqa: BLE001 - Shopify retries a 5xx; the reason goes to the log
                    # Its type only: a message may quote a document (personal data).
                    log.warning("webhook %s for %s failed (%s); Shopify retries it", delivery.topic, delivery.shop,
                                type(error).__name__)
                    self._answer(500, {"result": "failed", "detail": type(error).__name__})
                    return
                for event in queued:  # handed to the workers (in memory) before the answer
                    applier.submit(event)
                self._answer(outcome.status, {"result": outcome.result, "detail": outcome.detail})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                """Silent: the handler logs what matters, without payloads."""

        self._server = _Server((host, port), _Request)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WebhookServer:
        self.workers.start()
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhooks", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.workers.close()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Whether every accepted event was applied (or failed for good) within `timeout` seconds."""
        return self.workers.wait_idle(timeout)

    def serve_forever(self) -> None:
        self.workers.start()
        try:
            self._server.serve_forever()
        finally:
            self.workers.close()
