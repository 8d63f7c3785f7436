"""A live progress line for long commands: rewritten in place on a terminal, one line per update elsewhere."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    def __init__(self, enabled: bool = True, stream=None, min_interval: float = 0.2) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._width = 0

    def update(self, message: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < (self.min_interval if self.tty else 1.0):
            return
        if self.tty:
            padded = message.ljust(self._width)
            self._width = len(message)
            self.stream.write("\r" + padded[:160])
        else:
            self.stream.write(message + "\n")
        self.stream.flush()
        self._last = now

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
