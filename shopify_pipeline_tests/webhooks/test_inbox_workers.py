"""InboxWorkers at the seam: a fake inbox and handler, to reach failures the real servers rarely show."""

from __future__ import annotations

import threading
import time

from shopify_pipeline.dynamo.client import DynamoThrottledError
from shopify_pipeline.webhooks.inbox import PENDING, InboxItem, InboxWorkers


class _Inbox:
    """Holds items in memory; `done` fails the first time (DynamoDB throttled)."""

    def __init__(self) -> None:
        self.items_by_id: dict[str, InboxItem] = {}
        self.fail_done = 1
        self.lock = threading.Lock()

    def items(self, status: str | None = None) -> list[InboxItem]:
        with self.lock:
            return [i for i in self.items_by_id.values() if status is None or i.status == status]

    def due(self) -> list[InboxItem]:
        return self.items(PENDING)

    def pending(self, limit: int | None = None) -> list[InboxItem]:
        return self.items(PENDING)[:limit]

    def get(self, event_id: str) -> InboxItem | None:
        return self.items_by_id.get(event_id)

    def done(self, event_id: str) -> None:
        with self.lock:
            if self.fail_done:
                self.fail_done -= 1
                raise DynamoThrottledError("throttled")
            self.items_by_id.pop(event_id, None)


class _Handler:
    claim_seconds = 1.0

    def __init__(self) -> None:
        self.applied: list[str] = []

    def apply(self, event: dict, lambda_context: object = None) -> dict:
        self.applied.append(event["event_id"])
        return {"result": "applied"}


def test_a_worker_outlives_an_inbox_failure_and_the_sweep_finishes_the_event():
    inbox, handler = _Inbox(), _Handler()
    events = [{"event_id": f"e{n}", "topic": "orders/updated", "user": "u"} for n in range(3)]
    for event in events:
        inbox.items_by_id[event["event_id"]] = InboxItem(event, PENDING, 0, 0.0)
    workers = InboxWorkers(handler, inbox, workers=1, sweep_seconds=0.05).start()  # one worker: it must survive
    try:
        assert workers.wait_idle(10)
    finally:
        workers.close()
    assert inbox.items() == []  # every event done, the one whose `done` failed too (applied again: a duplicate)
    assert sorted(set(handler.applied)) == ["e0", "e1", "e2"]


class _SlowShopHandler(_Handler):
    """Shop "slow" waits for its (simulated) points: each apply holds its worker until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.slow_in_flight = 0
        self.most_slow_in_flight = 0
        self.lock = threading.Lock()

    def apply(self, event: dict, lambda_context: object = None) -> dict:
        if event["shop"] == "slow":
            with self.lock:
                self.slow_in_flight += 1
                self.most_slow_in_flight = max(self.most_slow_in_flight, self.slow_in_flight)
            self.release.wait(10)
            with self.lock:
                self.slow_in_flight -= 1
        return super().apply(event)


def test_a_throttled_shops_burst_does_not_hold_up_the_other_shops():
    inbox, handler = _Inbox(), _SlowShopHandler()
    inbox.fail_done = 0
    workers = InboxWorkers(handler, inbox, workers=4, sweep_seconds=60, per_shop=2).start()
    try:
        for n in range(20):
            event = {"event_id": f"slow-{n}", "topic": "orders/updated", "user": "a", "shop": "slow"}
            inbox.items_by_id[event["event_id"]] = InboxItem(event, PENDING, 0, 0.0)
            workers.submit(event)
        fast = {"event_id": "fast-1", "topic": "orders/updated", "user": "b", "shop": "fast"}
        inbox.items_by_id["fast-1"] = InboxItem(fast, PENDING, 0, 0.0)
        workers.submit(fast)
        deadline = time.monotonic() + 10
        while "fast-1" not in handler.applied and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        # The other shop's event went through while every slow event still waited for its points.
        assert "fast-1" in handler.applied and not [e for e in handler.applied if e.startswith("slow")]
        assert handler.most_slow_in_flight == 2
        handler.release.set()
        assert workers.wait_idle(10)
    finally:
        handler.release.set()
        workers.close()
    assert len(handler.applied) == 21 and inbox.items() == []
