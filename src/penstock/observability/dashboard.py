"""The admin dashboard's history: snapshots of the Prometheus registries, and the charts drawn from them.

Every `interval_s` the registries are read (`collect()`, no text parsing) into a snapshot; each new
snapshot closes one point of every chart, computed as Prometheus computes rate() between two scrapes
and histogram_quantile() over a sliding window. The points are kept in a ring buffer of a few minutes.
Everything but `DashboardHistory` is a plain function of snapshots, so it is tested with hand-made ones.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry

REQUESTS = "penstock_requests_total"
HTTP_RESPONSES = "penstock_http_responses_total"
STAGE_BUCKETS = "penstock_stage_seconds_bucket"
TOKENS = "penstock_tokens_total"
COST = "penstock_cost_total"
KV_USAGE = "penstock_kv_cache_usage_ratio"
WAITING = "penstock_engine_waiting_sequences"
RUNNING = "penstock_engine_running_sequences"
BREAKERS = "penstock_upstream_breaker_state"
UPSTREAM_IN_FLIGHT = "penstock_upstream_in_flight"
CHARTED = frozenset(
    {REQUESTS, HTTP_RESPONSES, STAGE_BUCKETS, TOKENS, COST, KV_USAGE, WAITING, RUNNING, BREAKERS, UPSTREAM_IN_FLIGHT}
)

Labels = frozenset[tuple[str, str]]
Keep = Callable[[Mapping[str, str]], bool]  # which series of a metric count
Values = Mapping[str, float | None]  # one chart's series → its value at one point
Sums = dict[tuple[str, ...], float]  # label values → total


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # unix seconds
    samples: Mapping[str, Mapping[Labels, float]]  # sample name (…_total, …_bucket) → labels → value


def take_snapshot(registries: Iterable[CollectorRegistry], at: float) -> Snapshot:
    """The charted samples of `registries` now; the others would only cost memory."""
    samples: dict[str, dict[Labels, float]] = {}
    for family in (family for registry in registries for family in registry.collect()):
        for sample in family.samples:
            if sample.name in CHARTED:
                samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return Snapshot(at, samples)


def increases(before: Snapshot, after: Snapshot, name: str) -> dict[Labels, float]:
    """How much each counter series grew; one smaller than before was reset (a restart) and counts from zero."""
    old = before.samples.get(name, {})
    return {labels: _increase(old.get(labels, 0.0), value) for labels, value in after.samples.get(name, {}).items()}


def _increase(old: float, new: float) -> float:
    return new - old if new >= old else new


def grouped(values: Mapping[Labels, float], by: Sequence[str], keep: Keep | None = None) -> Sums:
    """`sum by (by) (values)`, over the series `keep` accepts."""
    sums: Sums = {}
    for labels, value in values.items():
        named = dict(labels)
        if keep is None or keep(named):
            key = tuple(named.get(label, "") for label in by)
            sums[key] = sums.get(key, 0.0) + value
    return sums


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts by upper bound: linear within the bucket
    the rank falls in; the highest finite bound when it falls in +Inf; None without observations."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    counts = list(accumulate((buckets[b] for b in bounds), max))  # resets can leave them non-monotonic
    if counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    i = next(i for i, count in enumerate(counts) if count >= rank)
    if i == len(bounds) - 1:
        return bounds[-2]
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    return lower + (bounds[i] - lower) * (rank - below) / (counts[i] - below)


@dataclass(frozen=True, slots=True)
class Window:
    """The snapshots one point is computed from: the sliding window's first, the previous and the current."""

    first: Snapshot
    prev: Snapshot
    cur: Snapshot

    def rate(self, name: str, by: Sequence[str] = (), keep: Keep | None = None) -> dict[str, float]:
        """Per second since the previous snapshot, summed by `by`."""
        seconds = self.cur.at - self.prev.at
        if seconds <= 0:  # the wall clock stepped back
            return {}
        sums = grouped(increases(self.prev, self.cur, name), by, keep)
        return {" ".join(key): value / seconds for key, value in sums.items()}

    def latest(self, name: str, by: Sequence[str] = ()) -> dict[str, float]:
        """Gauges and cumulative totals as they are now, summed by `by`."""
        return {" ".join(key): value for key, value in grouped(self.cur.samples.get(name, {}), by).items()}

    def quantiles(self, name: str, q: float, by: str) -> dict[str, float | None]:
        """The q-quantile of a histogram's `_bucket` series over the window, per value of label `by`."""
        counts = grouped(increases(self.first, self.cur, name), (by, "le"))
        buckets: dict[str, dict[float, float]] = {}
        for (group, le), count in counts.items():
            buckets.setdefault(group, {})[float(le)] = count
        return {group: histogram_quantile(q, b) for group, b in buckets.items()}


def share(rates: Mapping[str, float], counted: Callable[[str], bool]) -> float | None:
    """The part of the total whose key is `counted`; None when there is no total to share."""
    total = sum(rates.values())
    return sum(v for k, v in rates.items() if counted(k)) / total if total > 0 else None


def _not_dashboard(labels: Mapping[str, str]) -> bool:
    # The page polls every two seconds: its own answers would dilute the error rate they report.
    return not labels.get("route", "").startswith("/dashboard")


def _request_rate(w: Window) -> Values:
    return {"all": sum(w.rate(REQUESTS).values())}


def _error_rate(w: Window) -> Values:
    statuses = w.rate(REQUESTS, ("status",))
    codes = w.rate(HTTP_RESPONSES, ("code",), _not_dashboard)
    return {"not ok": share(statuses, lambda s: s != "ok"), "http 5xx": share(codes, lambda c: c.startswith("5"))}


def _output_tokens(w: Window) -> Values:
    return w.rate(TOKENS, ("deployment",), lambda labels: labels.get("direction") == "out")


def _per_deployment(w: Window) -> Values:
    # Requests refused before routing have no deployment; they show in the request and error rates.
    return w.rate(REQUESTS, ("deployment",), lambda labels: bool(labels.get("deployment")))


def _queue(w: Window) -> Values:
    waiting = {f"{d} waiting": v for d, v in w.latest(WAITING, ("deployment",)).items()}
    return waiting | {f"{d} running": v for d, v in w.latest(RUNNING, ("deployment",)).items()}


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    title: str
    unit: str
    values: Callable[[Window], Values]


CHARTS = (
    Chart("requests", "Request rate", "req/s", _request_rate),
    Chart("errors", "Error rate", "share", _error_rate),
    Chart("stage_p50", "Stage latency p50 (60 s window)", "s", lambda w: w.quantiles(STAGE_BUCKETS, 0.5, "stage")),
    Chart("stage_p95", "Stage latency p95 (60 s window)", "s", lambda w: w.quantiles(STAGE_BUCKETS, 0.95, "stage")),
    Chart("tokens", "Output tokens", "tok/s", _output_tokens),
    Chart("cost", "Cost per tenant (cumulative)", "cost", lambda w: w.latest(COST, ("tenant",))),
    Chart("deployments", "Requests per deployment", "req/s", _per_deployment),
    Chart("kv_cache", "KV cache usage", "ratio", lambda w: w.latest(KV_USAGE, ("deployment",))),
    Chart("queue", "Queue depth", "sequences", _queue),
    Chart(
        "breakers",
        "Upstream replicas' circuits: 0 closed, 1 half-open, 2 open",
        "state",
        lambda w: w.latest(BREAKERS, ("deployment", "replica")),
    ),
    Chart(
        "upstream_in_flight",
        "Requests in flight per upstream replica",
        "requests",
        lambda w: w.latest(UPSTREAM_IN_FLIGHT, ("deployment", "replica")),
    ),
)


@dataclass(frozen=True, slots=True)
class Point:
    at: float
    charts: Mapping[str, Values]  # chart name → its series' values at `at`


def point(window: Window) -> Point:
    return Point(window.cur.at, {chart.name: chart.values(window) for chart in CHARTS})


def window_start(snapshots: Sequence[Snapshot], cutoff: float) -> Snapshot:
    """The oldest snapshot taken at or after `cutoff`; the newest when none is."""
    return next((s for s in snapshots if s.at >= cutoff), snapshots[-1])


def dashboard_json(points: Sequence[Point], interval_s: float, window_s: float) -> dict[str, Any]:
    """What the page draws: one time axis, and per chart its series aligned with it (null: no value)."""
    return {
        "interval_s": interval_s,
        "window_s": window_s,
        "times": [p.at for p in points],
        "charts": [_chart_json(chart, points) for chart in CHARTS],
    }


def _chart_json(chart: Chart, points: Sequence[Point]) -> dict[str, Any]:
    names = sorted({name for p in points for name in p.charts[chart.name]})
    series = {name: [p.charts[chart.name].get(name) for p in points] for name in names}
    return {"name": chart.name, "title": chart.title, "unit": chart.unit, "series": series}


class DashboardHistory:
    """The last `retention_s` of dashboard points, one every `interval_s`, filled by a task while entered."""

    def __init__(
        self,
        registries: Iterable[CollectorRegistry],
        *,
        interval_s: float = 2.0,
        retention_s: float = 300.0,
        window_s: float = 60.0,
    ) -> None:
        self.interval_s, self.window_s = interval_s, window_s
        self._registries = tuple(registries)
        self._snapshots: deque[Snapshot] = deque(maxlen=math.ceil(window_s / interval_s) + 1)
        self._points: deque[Point] = deque(maxlen=max(1, math.ceil(retention_s / interval_s)))
        self._task: asyncio.Task[None] | None = None

    def record(self, snapshot: Snapshot) -> None:
        """Adds `snapshot`, and the point it closes when there is a snapshot before it."""
        if self._snapshots:
            first = window_start(self._snapshots, snapshot.at - self.window_s)
            self._points.append(point(Window(first, self._snapshots[-1], snapshot)))
        self._snapshots.append(snapshot)

    def data(self) -> dict[str, Any]:
        return dashboard_json(self._points, self.interval_s, self.window_s)

    async def __aenter__(self) -> DashboardHistory:
        self._task = asyncio.create_task(self._run(), name="penstock-dashboard")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    async def _run(self) -> None:
        while True:
            # Requests settled before the snapshot are observed a loop turn later (per_turn.py); the loop
            # runs callbacks in the order they were queued, so one turn's wait lets theirs run first.
            await asyncio.sleep(0)
            self.record(take_snapshot(self._registries, time.time()))
            await asyncio.sleep(self.interval_s)
