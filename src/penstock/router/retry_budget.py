"""How many retries the ladder may spend: a share of the requests over a sliding window (Envoy's and
Finagle's retry budgets), so a failing upstream costs at most that share in extra calls instead of
multiplying the load on it by the number of rungs."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from penstock.config import RouterConfig


class RetryBudget:
    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = config.retry_ratio
        self._window_s = config.retry_window_s
        self._min = config.min_retries
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.refused = 0  # retries not taken for want of budget

    def request(self) -> None:
        """A request arrived: it earns the budget `retry_ratio` of a retry."""
        self._requests.append(self._clock())

    def try_spend(self) -> bool:
        """Take one retry if the window's budget has room for it."""
        now = self._clock()
        for times in (self._requests, self._retries):
            while times and now - times[0] > self._window_s:
                times.popleft()
        if len(self._retries) + 1 > self._ratio * len(self._requests) + self._min:
            self.refused += 1
            return False
        self._retries.append(now)
        return True
