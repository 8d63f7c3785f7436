"""The webhook inbox: answer Shopify at once, apply after (issue #15).

Shopify waits 5 s for an answer, and applying an event can take longer: it reads the record back from Shopify,
which waits when the shop's rate limit is spent. So the HTTPS door checks a delivery (HMAC, shop, shape),
writes its events here, one item per user, and answers 200; the events are applied after, by the local
server's workers (`InboxWorkers`) or, in AWS, by a Lambda that this table's stream invokes.

An item holds ids only (topic, shop, user, record id; a compliance request's customer, order and request ids),
never a payload: nothing personal waits here. An applied event's item is deleted. One whose apply fails is
tried again after 2, 4, 8 … minutes (about 4 hours in all, as Shopify would have); after MAX_ATTEMPTS it stays,
marked failed, until
`shopify-pipeline webhooks replay` or its TTL (7 days; the daily sync reconciles the records meanwhile). A
compliance request's item has no TTL: nothing else would carry it out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

from shopify_pipeline.dynamo.client import translate_errors

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
RETRY_BASE_SECONDS = 120.0  # the first retry's delay; each next one doubles (2, 4 … 128 min: 4 h 14 min in all,
RETRY_CAP_SECONDS = 7200.0  # about Shopify's own 8 retries over 4 hours)
STUCK_NEW_SECONDS = 60.0  # in AWS, a new item the stream has not applied this long after it was due is re-queued
KEEP_DAYS = 7
STUCK_SECONDS = 900.0  # a pending item due this long ago was left behind (`replay` takes it)
PENDING, FAILED = "pending", "failed"
# A merchant's privacy request has no reconciliation: its item stays until it is applied, failed or not.
NEVER_EXPIRE = ("customers/redact", "customers/data_request", "shop/redact")


@dataclass(frozen=True)
class InboxItem:
    event: dict
    status: str
    attempts: int
    not_before: float
    last_error: str = ""
    was_failed: bool = False  # queued again by `replay` after it had failed for good

    @property
    def event_id(self) -> str:
        return self.event["event_id"]


class WebhookInbox:
    """The inbox table (`TableNames.webhook_inbox`, key `id`, TTL `expiration`)."""

    def __init__(self, dynamodb, table: str, clock: Callable[[], float] = time.time,
                 retry_base_seconds: float = RETRY_BASE_SECONDS) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self._clock = clock
        self.retry_base_seconds = retry_base_seconds

    def put(self, event: dict) -> bool:
        """Queue `event` (its `event_id` is the key). False when it is waiting already (a duplicate delivery)."""
        now = self._clock()
        item = {"id": {"S": event["event_id"]}, "event": {"S": json.dumps(event, sort_keys=True)},
                "status": {"S": PENDING}, "queue": {"S": PENDING}, "attempts": {"N": "0"},
                "notBefore": {"N": f"{now:.3f}"}, "receivedAt": {"S": _iso(now)}, "userId": {"S": event["user"]}}
        if event["topic"] not in NEVER_EXPIRE:  # the daily sync reconciles a record event lost with its item
            item["expiration"] = {"N": str(int(now) + KEEP_DAYS * 86_400)}
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            try:
                self.dynamodb.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(id)")
            except self.dynamodb.exceptions.ConditionalCheckFailedException:
                return False
        return True

    def done(self, event_id: str) -> None:
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            self.dynamodb.delete_item(TableName=self.table, Key={"id": {"S": event_id}})

    def postpone(self, event_id: str, seconds: float) -> None:
        """Try again in `seconds`, without counting an attempt (another worker holds the event's claim)."""
        self._update(event_id, "SET notBefore = :t", {":t": {"N": f"{self._clock() + seconds:.3f}"}})

    def attempt_failed(self, item: InboxItem, error: BaseException) -> str:
        """Count a failed attempt: PENDING again after the next delay, or FAILED after MAX_ATTEMPTS."""
        attempts = item.attempts + 1
        status = FAILED if attempts >= MAX_ATTEMPTS else PENDING
        delay = min(RETRY_CAP_SECONDS, self.retry_base_seconds * 2 ** (attempts - 1))
        # The error's type only: a message may quote a document (personal data). A failed item leaves the index.
        self._update(item.event_id, "SET attempts = :a, #s = :s, notBefore = :t, lastError = :e"
                     + (" REMOVE #q" if status == FAILED else ""),
                     {":a": {"N": str(attempts)}, ":s": {"S": status}, ":t": {"N": f"{self._clock() + delay:.3f}"},
                      ":e": {"S": type(error).__name__}})
        return status

    def get(self, event_id: str) -> InboxItem | None:
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            raw = self.dynamodb.get_item(TableName=self.table, Key={"id": {"S": event_id}},
                                         ConsistentRead=True).get("Item")
        return _item(raw) if raw else None

    def due(self, limit: int | None = None) -> list[InboxItem]:
        """The pending items whose time has come, oldest first (from the `due` index: pending items only)."""
        return self.pending(until=self._clock(), limit=limit)

    def pending(self, until: float | None = None, limit: int | None = None) -> list[InboxItem]:
        """Pending items (due by `until`, if given), from the `due` index: its reads grow with what waits, not
        with the failed items kept in the table."""
        condition, values = "#q = :p", {":p": {"S": PENDING}}
        if until is not None:
            condition += " AND notBefore <= :t"
            values[":t"] = {"N": f"{until:.3f}"}
        kwargs = {"TableName": self.table, "IndexName": "due", "KeyConditionExpression": condition,
                  "ExpressionAttributeNames": {"#q": "queue"}, "ExpressionAttributeValues": values}
        found: list[InboxItem] = []
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            for page in self.dynamodb.get_paginator("query").paginate(
                    **kwargs, PaginationConfig={"MaxItems": limit} if limit else {}):
                found.extend(_item(raw) for raw in page.get("Items", []))
        return found

    def drop_user(self, user_id: str) -> int:
        """Delete every item of `user_id` (shop/redact erases the shop: its waiting events go too)."""
        dropped = 0
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            for page in self.dynamodb.get_paginator("scan").paginate(
                    TableName=self.table, FilterExpression="userId = :u", ProjectionExpression="id",
                    ExpressionAttributeValues={":u": {"S": user_id}}):
                for raw in page.get("Items", []):
                    self.dynamodb.delete_item(TableName=self.table, Key={"id": raw["id"]})
                    dropped += 1
        return dropped

    def items(self, status: str | None = None) -> list[InboxItem]:
        """Every item (of `status`), read consistently."""
        found = []
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url):
            for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True):
                found.extend(_item(raw) for raw in page.get("Items", []))
        return [item for item in found if status is None or item.status == status]

    def replay(self, stuck_seconds: float = STUCK_SECONDS) -> int:
        """Queue again, attempts reset, the failed items and the pending ones nobody took for `stuck_seconds`
        (in AWS, those left when the stream's retries ran out). Returns how many."""
        now = self._clock()
        failed = [item for item in self.items() if item.status == FAILED or item.not_before < now - stuck_seconds]
        for item in failed:
            now = self._clock()
            # replayedAt changes the item, so in AWS its stream invokes the applying Lambda again.
            self._update(item.event_id, "SET #s = :s, #q = :s, attempts = :z, notBefore = :t, replayedAt = :r, "
                         "wasFailed = :w", {":s": {"S": PENDING}, ":z": {"N": "0"}, ":t": {"N": f"{now:.3f}"},
                                            ":r": {"S": _iso(now)}, ":w": {"BOOL": item.was_failed
                                                                            or item.status == FAILED}})
        return len(failed)

    def requeue_due(self) -> int:
        """In AWS, where no worker sweeps: touch the due items that wait for a retry (or that the stream left
        behind), so the table's stream hands them to the applying Lambda again. Returns how many."""
        now = self._clock()
        due = [item for item in self.due() if item.attempts > 0 or item.not_before < now - STUCK_NEW_SECONDS]
        for item in due:
            self._update(item.event_id, "SET replayedAt = :r", {":r": {"S": f"{_iso(now)}#{item.attempts}"}})
        return len(due)

    def _update(self, event_id: str, expression: str, values: dict) -> None:
        names = {k: v for k, v in (("#s", "status"), ("#q", "queue")) if k in expression}
        # An item gone meanwhile was applied by another worker: nothing is left to change.
        with translate_errors(self.table, self.dynamodb.meta.endpoint_url), \
                contextlib.suppress(self.dynamodb.exceptions.ConditionalCheckFailedException):
            self.dynamodb.update_item(TableName=self.table, Key={"id": {"S": event_id}},
                                      UpdateExpression=expression, ExpressionAttributeValues=values,
                                      ConditionExpression="attribute_exists(id)",
                                      **({"ExpressionAttributeNames": names} if names else {}))


def item_from_image(image: dict) -> InboxItem:
    """An InboxItem from a DynamoDB stream record's NewImage (the same attribute-value shape)."""
    return _item(image)


def _item(raw: dict) -> InboxItem:
    return InboxItem(json.loads(raw["event"]["S"]), raw.get("status", {}).get("S", PENDING),
                     int(raw.get("attempts", {}).get("N", "0")), float(raw.get("notBefore", {}).get("N", "0")),
                     raw.get("lastError", {}).get("S", ""), raw.get("wasFailed", {}).get("BOOL", False))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class InboxWorkers:
    """Threads that apply the inbox's events with `handler.apply`: those the server hands over as it accepts
    them, and every `sweep_seconds` the due ones (left by a restart, or waiting for a retry).

    Events queue per shop and the workers take the shops in turn, at most `per_shop` events of one shop at a
    time: a burst of one throttled shop (each read-back waiting for that shop's points) holds up `per_shop`
    workers, not every shop's events."""

    def __init__(self, handler, inbox: WebhookInbox, workers: int = 4, sweep_seconds: float = 5.0,
                 per_shop: int = 2) -> None:
        self.handler = handler
        self.inbox = inbox
        self.sweep_seconds = sweep_seconds
        self.per_shop = max(1, min(per_shop, workers))
        self._queued: dict[str, deque[InboxItem]] = {}  # per shop, in arrival order
        self._turns: deque[str] = deque()  # shops with queued events and room for one more in flight
        self._in_flight: Counter[str] = Counter()
        self._busy: set[str] = set()  # event ids queued or being applied
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"webhook-apply-{n}", daemon=True)
                         for n in range(workers)]
        self._threads.append(threading.Thread(target=self._sweep, name="webhook-sweep", daemon=True))

    def start(self) -> InboxWorkers:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        """Stop after the events being applied; what is still queued stays in the inbox for the next start."""
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def submit(self, event: dict) -> None:
        self._submit(InboxItem(event, PENDING, 0, 0.0))

    def _submit(self, item: InboxItem) -> None:
        shop = item.event.get("shop", "")
        with self._ready:
            if item.event_id in self._busy:
                return
            self._busy.add(item.event_id)
            self._queued.setdefault(shop, deque()).append(item)
            self._offer(shop)

    def _offer(self, shop: str) -> None:
        """Give `shop` a turn if it has events queued and room (lock held)."""
        if self._queued.get(shop) and self._in_flight[shop] < self.per_shop and shop not in self._turns:
            self._turns.append(shop)
            self._ready.notify()

    def _take(self) -> InboxItem | None:
        with self._ready:
            while not self._turns and not self._stop.is_set():
                self._ready.wait()
            if self._stop.is_set():
                return None
            shop = self._turns.popleft()
            item = self._queued[shop].popleft()
            if not self._queued[shop]:
                del self._queued[shop]
            self._in_flight[shop] += 1
            self._offer(shop)  # its next event, if it still has room: behind the other shops' turns
            return item

    def _finish(self, item: InboxItem) -> None:
        shop = item.event.get("shop", "")
        with self._ready:
            self._in_flight[shop] -= 1
            if not self._in_flight[shop]:
                del self._in_flight[shop]
            self._busy.discard(item.event_id)
            self._offer(shop)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued, being applied or pending in the inbox (failed items aside)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._ready:
                busy = bool(self._busy)
            # Read consistently from the table, not the index (which may lag a moment behind a put).
            if not busy and not self.inbox.items(PENDING):
                return True
            time.sleep(0.05)
        return False

    def _sweep(self) -> None:
        while not self._stop.is_set():
            try:
                for item in self.inbox.due():
                    self._submit(item)
            except Exception as error:  # noqa: BLE001 - DynamoDB unreachable for a while: the next sweep tries again
                log.warning("webhook inbox sweep failed (%s); trying again in %.0f s", type(error).__name__,
                            self.sweep_seconds)
            self._stop.wait(self.sweep_seconds)

    def _work(self) -> None:
        while (item := self._take()) is not None:
            try:
                self._apply(item)
            except Exception as error:  # noqa: BLE001 - the inbox itself failed (DynamoDB): the item stays
                log.warning("webhook inbox: %s while applying an event; the sweep takes it again",
                            type(error).__name__)
            finally:
                self._finish(item)

    def _apply(self, item: InboxItem) -> None:
        current = self.inbox.get(item.event_id)
        if current is None or current.status != PENDING:
            return  # applied meanwhile by another server, or failed for good
        apply_from_inbox(self.handler, self.inbox, current)


def apply_from_inbox(handler, inbox: WebhookInbox, item: InboxItem, lambda_context: object = None) -> str:
    """Apply one inbox item and settle it: deleted when applied ("applied"), postponed while another worker
    holds its claim ("postponed"), counted as a failed attempt otherwise ("retry", or "failed" after
    MAX_ATTEMPTS: then counted for the webhooks_applied check). Raises only when the inbox itself fails."""
    event = item.event
    try:
        handler.apply(event, lambda_context)
    except IdempotencyAlreadyInProgressError:
        inbox.postpone(item.event_id, handler.claim_seconds)  # the claim ends by then
        return "postponed"
    except Exception as error:  # noqa: BLE001 - counted and retried; the type only (a message may hold data)
        status = inbox.attempt_failed(item, error)
        log.warning("webhook %s for %s not applied (%s, attempt %d of %d)%s", event["topic"], event["user"],
                    type(error).__name__, item.attempts + 1, MAX_ATTEMPTS,
                    ": kept as failed for `shopify-pipeline webhooks replay`" if status == FAILED else "")
        if status == FAILED:
            handler.note(event["user"], event["topic"], None, "failed")
        return "failed" if status == FAILED else "retry"
    inbox.done(item.event_id)
    if item.was_failed:  # replayed after failing for good, and applied now: no longer failed
        handler.note(event["user"], event["topic"], None, "failed", -1)
    return "applied"
