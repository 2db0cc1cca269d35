"""`penstock bench gateway` end to end, briefly: a real gateway process, real requests, sane figures."""

from __future__ import annotations

import json

import pytest

from penstock.bench.gateway import GatewayBenchOptions, GatewayBenchResult, run_gateway_bench

REQUIRED = ("overhead_p50_ms", "overhead_p99_ms", "max_rps")


@pytest.fixture(scope="module")
def result() -> GatewayBenchResult:
    return run_gateway_bench(GatewayBenchOptions(rate=40, duration_s=1.5, connections=4, observability_rounds=1))


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
    options = GatewayBenchOptions(rate=20, duration_s=1.0, connections=2, redis_url=redis_url, observability_rounds=1)
    result = run_gateway_bench(options)
    assert result.errors == 0 and result.limiter == "redis"
