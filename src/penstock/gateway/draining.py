"""Graceful shutdown for streams: finish within the grace period, or end with an error event.

The server calls `begin` when the shutdown signal arrives. A stream still running when the grace
period is about to end stops at its next event and tells the client why, in the stream's own error
format, before the server closes the connection; the margin leaves time for those bytes to go out.
"""

from __future__ import annotations

import time

from penstock.errors import ShuttingDown

MARGIN_S = 1.0


class Draining:
    def __init__(self) -> None:
        self._deadline: float | None = None

    def begin(self, grace_s: float) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + max(0.0, grace_s - min(MARGIN_S, grace_s / 2))

    def check(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise ShuttingDown("the server is shutting down and its grace period for this stream has ended")
