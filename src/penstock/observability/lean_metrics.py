"""Counters and histograms for the request path: prometheus_client's registry and exposition, cheaper writes.

prometheus_client takes a lock on every increment so that any thread may write; a request's dozen
observations cost about 40 microseconds on a slow core, most of what observability added to a
gateway request. These metrics have one writer, the gateway's event loop, so an observation is a
bisect and two list updates. They are registered with a CollectorRegistry as collectors, and
/metrics renders them as it renders prometheus_client's own: `…_total` counters, and histograms
with cumulative `le` buckets, `…_count` and `…_sum` (no `…_created` samples).

Readers may run on another thread (a scrape). A new series is added, and the series copied for a
reader, under a lock (copying a dict is not atomic); observing an existing one takes none. A reader
may see a histogram's count and sum one observation apart.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from math import inf

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, since a bucket's `le` bound is inclusive.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class _Family:
    """One metric name and its series by label values, registered with `registry`."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._series: dict[tuple[str, ...], CounterSeries | HistogramSeries] = {}
        self._adding = threading.Lock()
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, self.kind)]

    def _child(self, values: tuple[str, ...]) -> CounterSeries | HistogramSeries:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            with self._adding:
                series = self._series.setdefault(values, self._new())
        return series

    def _new(self) -> CounterSeries | HistogramSeries:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], CounterSeries | HistogramSeries]]:
        with self._adding:
            return list(self._series.items())


class LeanCounter(_Family):
    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def labels(self, *values: str) -> CounterSeries:
        return self._child(values)  # type: ignore[return-value]

    def _new(self) -> CounterSeries:
        return CounterSeries()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._items():
            family.add_metric(values, series.value)  # type: ignore[union-attr]
        yield family


class LeanHistogram(_Family):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets if b != inf))
        self._le = [floatToGoString(b) for b in (*self._bounds, inf)]
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> HistogramSeries:
        return self._child(values)  # type: ignore[return-value]

    def _new(self) -> HistogramSeries:
        return HistogramSeries(self._bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._items():
            counts, total = list(series.counts), series.sum  # type: ignore[union-attr]
            family.add_metric(values, list(zip(self._le, accumulate(counts), strict=True)), total)
        yield family
