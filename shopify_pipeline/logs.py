"""What the engine and the Shopify client log (waits, retries, warnings), sent where a person looks.

The package logs through Python's `logging` under `shopify_pipeline`. `forward_logs(sink)` sends those
records to a sink for the duration of a block: the CLI's progress line, or a Dagster run's `context.log`.
A storm of retries or 429s must not flood either, so each kind of message (its logger and format) gets
at most one line per `interval` seconds; the lines held back are counted into the next one that passes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

PACKAGE_LOGGER = "shopify_pipeline"

Sink = Callable[[int, str], None]  # (logging level, message)


class RateLimitedForwarder(logging.Handler):
    """A logging handler that forwards records to `sink`, one per kind of message per `interval`."""

    def __init__(self, sink: Sink, interval: float = 5.0, level: int = logging.INFO,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level)
        self._sink = sink
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        kind = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            if now - self._last.get(kind, -self._interval) < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not break a sync
            message = str(record.msg)
        if held:
            message += f" (and {held} more like this in the last {self._interval:.0f} s)"
        self._sink(record.levelno, message)


@contextlib.contextmanager
def forward_logs(sink: Sink, interval: float = 5.0, level: int = logging.INFO) -> Iterator[None]:
    """Forward the package's log records at `level` and above to `sink` while the block runs."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = RateLimitedForwarder(sink, interval, level)
    previous = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
