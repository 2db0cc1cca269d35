"""Work queued during one event-loop turn, done together at the next: how a settled request is observed.

Settling a request queues its observation (the Prometheus series, the JSON log line); the
observations queued during a turn are handed over as one batch when the loop next gets a turn.
Under load one turn settles dozens of requests, and observing them together, with their code and
data still in the caches and their log lines in one write, cost less than half what observing each
between two requests did (bench gateway, 2-core machine: a log line took about 24 instead of 58
microseconds). Nothing waits on it, and it is done within milliseconds. Where no loop is running
(a script, a worker thread) an item is handled at once, as a batch of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerTurn(Generic[T]):
    def __init__(self, handle: Callable[[list[T]], None]) -> None:
        self._handle = handle
        self._pending: list[T] = []

    def put(self, item: T) -> None:
        if not self._pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._handle([item])
                return
            loop.call_soon(self.flush)
        self._pending.append(item)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._handle(pending)
