"""`penstock bench gateway` end to end, briefly: a real gateway process, real requests, sane figures."""

from __future__ import annotations

import json

import pytest

from penstock.bench.gateway import (
    GatewayBenchOptions,
    GatewayBenchResult,
    Round,
    cost_over_orders,
    paired_cost,
    run_gateway_bench,
)

REQUIRED = ("overhead_p50_ms", "overhead_p99_ms", "max_rps")


@pytest.fixture(scope="module")
def result() -> GatewayBenchResult:
    options = GatewayBenchOptions(
        rate=40, duration_s=1.5, connections=4, observability_rounds=2, observability_round_s=0.5
    )
    return run_gateway_bench(options)


def test_every_request_is_answered_and_timed(result: GatewayBenchResult) -> None:
    assert result.errors == 0
    assert result.requests >= 60  # 60 offered at 40/s for 1.5 s, and the closed loop's
    assert 0 < result.overhead_p50_ms <= result.overhead_p99_ms
    assert result.max_rps > 0 and result.achieved_rps > 0
    assert result.max_rps_observed > 0 and result.max_rps_unobserved > 0  # both gateways answered
    # Each gateway process's own CPU time, read from /proc, per request it served.
    assert result.cpu_us_per_request_observed > 0 and result.cpu_us_per_request_unobserved > 0


def test_the_json_has_the_required_keys_and_names_the_quoted_peer(result: GatewayBenchResult) -> None:
    figures = json.loads(json.dumps(result.to_dict()))
    assert set(REQUIRED) <= set(figures)
    assert "quoted" in figures["peer"]["name"] and figures["limiter"] == "in process"


def test_through_redis_the_limiter_says_so(redis_url: str) -> None:
    options = GatewayBenchOptions(
        rate=20, duration_s=1.0, connections=2, redis_url=redis_url, observability_rounds=1, observability_round_s=0.5
    )
    result = run_gateway_bench(options)
    assert result.errors == 0 and result.limiter == "redis"


def test_the_cost_is_taken_within_pairs_so_that_drift_between_pairs_cancels() -> None:
    # The machine halves its speed between the pairs; within each, observability costs 10%.
    pairs = [
        (Round(rps=900, cpu_us=1100), Round(rps=1000, cpu_us=1000)),
        (Round(rps=450, cpu_us=2200), Round(rps=500, cpu_us=2000)),
        (Round(rps=1800, cpu_us=550), Round(rps=2000, cpu_us=500)),
    ]
    cost = paired_cost(pairs)
    assert cost.rps_pct == pytest.approx(10.0) and cost.cpu_pct == pytest.approx(10.0)


def test_what_favours_the_gateway_started_second_cancels_over_the_two_start_orders() -> None:
    # Observability costs 5%; the gateway started second gets 2% more done, whichever it is.
    observed_second = [(Round(rps=950 * 1.02, cpu_us=1050 / 1.02), Round(rps=1000, cpu_us=1000))] * 3
    observed_first = [(Round(rps=950, cpu_us=1050), Round(rps=1000 * 1.02, cpu_us=1000 / 1.02))] * 3
    cost = cost_over_orders([observed_second, observed_first])
    assert cost.rps_pct == pytest.approx(5.0, abs=0.05) and cost.cpu_pct == pytest.approx(5.0, abs=0.05)
    assert paired_cost(observed_first).rps_pct == pytest.approx(6.86, abs=0.01)  # one order alone would not do
