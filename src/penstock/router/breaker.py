"""A replica's circuit breaker: closed (calls flow), open (none do), half-open (one probe at a time).

It opens on `consecutive_failures` in a row, or once `min_calls` are in its window of the last `window`
calls and their failure rate or slow-call rate reaches the configured share; after `open_s` it lets one
probe through, and the probe's outcome closes it or opens it again. Active health checks feed it too:
a failed check opens it at once, and a passing one closes what a failed check opened.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum

from penstock.config import BreakerConfig


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=config.window)  # (failed, slow)
        self._consecutive = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self._by_health = False  # opened by a failed health check, which a passing one may undo
        self.opened = 0  # times it opened, for metrics and tests
        self.changed_at = 0.0  # wall-clock time it last opened or closed: what other replicas' evidence must beat

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._config.open_s:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Whether a call may go now (a half-open breaker takes one probe at a time)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probing)

    def begin(self) -> None:
        """A call goes out; in half-open it is the probe, and no other call goes until it ends."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def succeeded(self, seconds: float = 0.0) -> None:
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._close()
            return
        self._consecutive = 0
        self._record(failed=False, slow=seconds >= self._config.slow_call_s)

    def failed(self) -> None:
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self.trip()
            return
        self._consecutive += 1
        self._record(failed=True, slow=False)

    def abandoned(self) -> None:
        """A call ended with neither verdict (the client left): a probe slot is given back."""
        self._probing = False

    def trip(self, *, by_health: bool = False) -> None:
        """Open now (a failed probe or health check): no call goes for `open_s`."""
        if self._state is not BreakerState.OPEN:
            self.opened += 1
            self._by_health = by_health
            self.changed_at = time.time()
        self._state, self._opened_at, self._probing = BreakerState.OPEN, self._clock(), False
        self._calls.clear()
        self._consecutive = 0

    def healthy(self) -> None:
        """A health check passed: a breaker that a failed check opened closes again (the replica is back);
        one that calls opened keeps to its schedule (the server may be up and still failing its calls)."""
        if self._state is not BreakerState.CLOSED and self._by_health:
            self._close()

    def _close(self) -> None:
        self._state, self._consecutive, self._by_health = BreakerState.CLOSED, 0, False
        self.changed_at = time.time()
        self._calls.clear()

    def _record(self, *, failed: bool, slow: bool) -> None:
        self._calls.append((failed, slow))
        config = self._config
        if self._consecutive >= config.consecutive_failures:
            self.trip()
            return
        if len(self._calls) < config.min_calls:
            return
        failures = sum(f for f, _ in self._calls) / len(self._calls)
        slow_calls = sum(s for _, s in self._calls) / len(self._calls)
        if failures >= config.failure_rate or slow_calls >= config.slow_call_rate:
            self.trip()
