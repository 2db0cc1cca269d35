"""The dashboard's arithmetic on hand-made snapshots: rates, shares, quantiles from bucket deltas, the window,
the ring buffer; and the task that fills it from real registries."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from penstock.observability.dashboard import (
    BREAKERS,
    COST,
    KV_USAGE,
    REQUESTS,
    RUNNING,
    STAGE_BUCKETS,
    TOKENS,
    UPSTREAM_IN_FLIGHT,
    WAITING,
    DashboardHistory,
    Snapshot,
    histogram_quantile,
    take_snapshot,
)
from penstock.observability.per_turn import PerTurn

BOUNDS = ("0.1", "0.5", "1.0", "+Inf")
Series = tuple[str, dict[str, str], float]


def snapshot(at: float, *series: Series) -> Snapshot:
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for name, labels, value in series:
        samples.setdefault(name, {})[frozenset(labels.items())] = value
    return Snapshot(at, samples)


def requests(deployment: str, status: str, count: float) -> Series:
    return REQUESTS, {"route": "chat.completions", "deployment": deployment, "status": status}, count


def stage(name: str, *cumulative: float) -> list[Series]:
    """One stage's `_bucket` series, cumulative counts for BOUNDS."""
    return [
        (STAGE_BUCKETS, {"stage": name, "route": "chat.completions", "le": le}, c)
        for le, c in zip(BOUNDS, cumulative, strict=True)
    ]


def charts(*snapshots: Snapshot, **history: float) -> dict[str, Any]:
    recorder = DashboardHistory((), **history)
    for s in snapshots:
        recorder.record(s)
    data = recorder.data()
    return {"times": data["times"], **{c["name"]: c["series"] for c in data["charts"]}}


def test_rates_are_increases_over_the_interval_between_snapshots() -> None:
    found = charts(
        snapshot(100, requests("stable", "ok", 10)),
        snapshot(102, requests("stable", "ok", 16), requests("stable", "error", 1), requests("canary", "ok", 1)),
    )
    assert found["times"] == [102]
    assert found["requests"] == {"all": [4.0]}  # (6 + 1 + 1) / 2 s
    assert found["deployments"] == {"canary": [0.5], "stable": [3.5]}
    assert found["errors"]["not ok"] == [pytest.approx(1 / 8)]


def test_a_counter_that_went_down_was_reset_and_counts_from_zero() -> None:
    found = charts(snapshot(0, requests("stable", "ok", 50)), snapshot(1, requests("stable", "ok", 3)))
    assert found["requests"] == {"all": [3.0]}


def test_an_idle_interval_has_a_zero_rate_and_no_error_share() -> None:
    found = charts(snapshot(0, requests("stable", "ok", 5)), snapshot(2, requests("stable", "ok", 5)))
    assert found["requests"] == {"all": [0.0]}
    assert found["errors"] == {"not ok": [None], "http 5xx": [None]}


def test_http_5xx_share_leaves_out_the_dashboards_own_polls() -> None:
    http = "penstock_http_responses_total"
    found = charts(
        snapshot(0),
        snapshot(
            1,
            (http, {"method": "POST", "route": "/v1/chat/completions", "code": "200"}, 3),
            (http, {"method": "POST", "route": "/v1/chat/completions", "code": "503"}, 1),
            (http, {"method": "GET", "route": "/dashboard/data", "code": "200"}, 40),
        ),
    )
    assert found["errors"]["http 5xx"] == [0.25]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1 + 0.4 * (20 - 10) / (30 - 10)),  # rank 20 falls in (0.1, 0.5]
        (0.95, 0.5 + 0.5 * (38 - 30) / (40 - 30)),  # rank 38 falls in (0.5, 1]
        (0.05, 0.1 * 2 / 10),  # the first bucket starts at zero
    ],
)
def test_quantiles_interpolate_within_a_bucket_as_prometheus_does(q: float, expected: float) -> None:
    assert histogram_quantile(q, {0.1: 10, 0.5: 30, 1.0: 40, math.inf: 40}) == pytest.approx(expected)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.95, {0.1: 1, 0.5: 2, math.inf: 10}) == 0.5


def test_no_observations_means_no_quantile() -> None:
    assert histogram_quantile(0.5, {0.1: 0, math.inf: 0}) is None
    assert histogram_quantile(0.5, {math.inf: 3}) is None


def test_stage_quantiles_come_from_bucket_deltas_over_the_sliding_window() -> None:
    slow = snapshot(0, *stage("decode", 0, 0, 0, 0))
    old = snapshot(30, *stage("decode", 0, 0, 0, 100))  # 100 observations past 1 s, long ago
    recent = snapshot(60, *stage("decode", 10, 10, 10, 110))  # then 10 under 0.1 s
    later = snapshot(90, *stage("decode", 20, 20, 20, 120))
    found = charts(slow, old, recent, later, interval_s=30, window_s=60)
    assert found["times"] == [30, 60, 90]
    # At 30 the 60 s window holds only the slow ones; at 60 all of them; at 90 the slow ones have left it.
    assert found["stage_p50"]["decode"] == [1.0, 1.0, 0.05]
    assert found["stage_p95"]["decode"][2] == pytest.approx(0.095)


def test_gauges_and_cost_are_read_as_they_are() -> None:
    series = [
        (COST, {"deployment": "stable", "tenant": "acme"}, 1.5),
        (COST, {"deployment": "canary", "tenant": "acme"}, 0.5),
        (KV_USAGE, {"deployment": "stable"}, 0.25),
        (WAITING, {"deployment": "stable"}, 3),
        (RUNNING, {"deployment": "stable"}, 2),
    ]
    found = charts(snapshot(0, *series), snapshot(1, *series))
    assert found["cost"] == {"acme": [2.0]}  # cumulative, whichever deployment served it
    assert found["kv_cache"] == {"stable": [0.25]}
    assert found["queue"] == {"stable waiting": [3.0], "stable running": [2.0]}


def test_each_upstream_replicas_circuit_and_load_are_charted() -> None:
    replica = {"deployment": "workers", "replica": "http://10.0.0.5:8001/v1"}
    first = snapshot(0, (BREAKERS, replica, 0), (UPSTREAM_IN_FLIGHT, replica, 3))
    found = charts(first, snapshot(1, (BREAKERS, replica, 2), (UPSTREAM_IN_FLIGHT, replica, 0)))
    assert found["breakers"] == {"workers http://10.0.0.5:8001/v1": [2.0]}  # open
    assert found["upstream_in_flight"] == {"workers http://10.0.0.5:8001/v1": [0.0]}


def test_output_tokens_count_only_the_generated_ones() -> None:
    def tokens(direction: str, count: float) -> Series:
        return TOKENS, {"deployment": "stable", "tenant": "acme", "direction": direction}, count

    found = charts(snapshot(0, tokens("in", 0), tokens("out", 0)), snapshot(2, tokens("in", 100), tokens("out", 8)))
    assert found["tokens"] == {"stable": [4.0]}


def test_a_series_that_appears_later_is_null_before_it() -> None:
    found = charts(
        snapshot(0, requests("stable", "ok", 1)),
        snapshot(1, requests("stable", "ok", 2)),
        snapshot(2, requests("stable", "ok", 3), requests("canary", "ok", 1)),
    )
    assert found["deployments"] == {"canary": [None, 1.0], "stable": [1.0, 1.0]}


def test_the_ring_buffer_keeps_only_the_retention_period() -> None:
    snapshots = [snapshot(t, requests("stable", "ok", t)) for t in range(20)]
    found = charts(*snapshots, interval_s=1, retention_s=5)
    assert found["times"] == [15, 16, 17, 18, 19]
    assert found["requests"] == {"all": [1.0] * 5}


def test_a_snapshot_keeps_the_charted_samples_of_every_registry() -> None:
    engines, gateway = CollectorRegistry(), CollectorRegistry()
    Counter("penstock_requests", "", ["status"], registry=gateway).labels("ok").inc(2)
    Counter("penstock_unrelated", "", registry=gateway).inc()
    Histogram("penstock_stage_seconds", "", ["stage"], buckets=(0.1,), registry=gateway).labels("decode").observe(1)
    found = take_snapshot((engines, gateway), at=7.0)
    assert found.at == 7.0
    assert set(found.samples) == {REQUESTS, STAGE_BUCKETS}
    assert found.samples[REQUESTS] == {frozenset({("status", "ok")}): 2.0}
    assert found.samples[STAGE_BUCKETS][frozenset({("stage", "decode"), ("le", "+Inf")})] == 1.0


async def test_while_entered_the_history_takes_a_snapshot_every_interval() -> None:
    registry = CollectorRegistry()
    counter = Counter("penstock_requests", "", ["status"], registry=registry).labels("ok")
    async with DashboardHistory((registry,), interval_s=0.02) as history:
        while len(history.data()["times"]) < 3:
            counter.inc()
            await asyncio.sleep(0.01)
    stopped = len(history.data()["times"])
    await asyncio.sleep(0.1)
    assert len(history.data()["times"]) == stopped  # the task ended with the context
    assert max(history.data()["charts"][0]["series"]["all"]) > 0


async def test_a_snapshot_counts_what_was_settled_before_it_though_observed_a_turn_later() -> None:
    registry = CollectorRegistry()
    counter = Counter("penstock_requests", "", ["status"], registry=registry).labels("ok")
    observations = PerTurn(lambda batch: counter.inc(len(batch)))
    async with DashboardHistory((registry,), interval_s=0.05) as history:
        observations.put(1)  # settled after the history's task was scheduled, before it ran
        while not history.data()["times"]:
            await asyncio.sleep(0.01)
    assert history.data()["charts"][0]["series"]["all"][0] == 0  # in the first snapshot, not a new arrival
