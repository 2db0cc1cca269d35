"""Adaptive throttling in front of an upstream that keeps refusing (the Google SRE book, "Handling
Overload"): each gateway counts, over the last `window_s`, the requests it meant to send and those the
upstream accepted, and refuses a new one locally with probability max(0, (requests - K x accepts) /
(requests + 1)). While the upstream accepts, nothing is refused; once it refuses most of its load, most
of what would have met that refusal stays here (and moves on down the ladder) instead of adding to it.
K = 2 lets through twice what is being accepted, so the upstream keeps getting enough to show recovery.
The rule is read from the window before the request, and only once it holds MIN_REQUESTS: on a handful
of requests one refusal would turn half of the next away.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

K = 2.0
WINDOW_S = 120.0
MIN_REQUESTS = 10


class AdaptiveThrottle:
    def __init__(
        self,
        k: float = K,
        window_s: float = WINDOW_S,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._k = k
        self._window_s = window_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._requests: deque[float] = deque()
        self._accepts: deque[float] = deque()
        self.refused = 0  # requests refused here, never sent

    def allow(self) -> bool:
        """Whether to send a request now; it is counted as meant either way."""
        now = self._clock()
        for times in (self._requests, self._accepts):
            while times and now - times[0] > self._window_s:
                times.popleft()
        requests = len(self._requests)
        self._requests.append(now)
        if requests < MIN_REQUESTS:
            return True
        refuse = max(0.0, (requests - self._k * len(self._accepts)) / (requests + 1))
        if refuse and self._rng.random() < refuse:
            self.refused += 1
            return False
        return True

    def accepted(self) -> None:
        """The upstream took a request (answered it, rather than refusing or failing it)."""
        self._accepts.append(self._clock())
