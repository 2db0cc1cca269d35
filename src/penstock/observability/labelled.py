"""A metric's labelled children, remembered: per request, labels() costs more than the observation."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram


class Labelled:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Counter | Histogram, *values: str) -> Any:
        """metric.labels(*values), the first time only."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child
