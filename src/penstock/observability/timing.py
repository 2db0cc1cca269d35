"""Per-stage wall time for one request: T = T_gateway + T_retrieval + T_prefill + T_decode + T_post."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter


class StageTimer:
    def __init__(self) -> None:
        self.started = perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.add(name, perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def total(self) -> float:
        return perf_counter() - self.started

    def milliseconds(self) -> dict[str, float]:
        return {name: round(s * 1000, 3) for name, s in self.seconds.items()}
