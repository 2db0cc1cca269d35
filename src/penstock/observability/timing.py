"""Per-stage wall time for one request: T = T_gateway + T_retrieval + T_prefill + T_decode + T_post.

Besides the sums per stage (the ledger's and the metrics'), the timer keeps each stage's intervals,
so a trace can show them where they happened; an interval that continues the previous one of the
same stage (decode, token after token) extends it instead of adding one per token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from penstock.types import Interval


class StageTimer:
    def __init__(self) -> None:
        self.started = perf_counter()
        self.started_ns = time.time_ns()  # the wall clock at `started`, to place intervals on a trace
        self.seconds: dict[str, float] = {}
        self.intervals: list[Interval] = []
        self.first_token: float | None = None  # perf_counter() when the first token was ready

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.add(name, perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """`seconds` spent in `name`, ending now."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        end = perf_counter()
        last = self.intervals[-1] if self.intervals else None
        if last is not None and last.name == name and end - seconds - last.end < 1e-3:
            self.intervals[-1] = Interval(name, last.start, end)
        else:
            self.intervals.append(Interval(name, end - seconds, end))

    def absorb(self, prefix: str, intervals: tuple[Interval, ...], seconds: dict[str, float]) -> None:
        """Another timer's stages (retrieval's sub-stages), named under `prefix`."""
        for name, value in seconds.items():
            self.seconds[prefix + name] = self.seconds.get(prefix + name, 0.0) + value
        self.intervals += [Interval(prefix + i.name, i.start, i.end) for i in intervals]

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = perf_counter()

    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    def total(self) -> float:
        return perf_counter() - self.started

    def wall_ns(self, at: float) -> int:
        """A perf_counter() reading of this request as wall-clock nanoseconds."""
        return self.started_ns + int((at - self.started) * 1e9)

    def milliseconds(self) -> dict[str, float]:
        # round(x) / 1e3, not round(x, 3): the same value for a millisecond count, at a fifth of the cost.
        return {name: round(s * 1e6) / 1e3 for name, s in self.seconds.items()}
