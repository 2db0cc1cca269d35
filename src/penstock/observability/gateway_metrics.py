"""The gateway's own metrics: rate-limit decisions and whether the limiter runs degraded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rate_limit_decisions = Counter(
            "penstock_rate_limit_decisions_total",
            "Rate-limit decisions by backend and result (allowed, limited)",
            ["backend", "result"],
            registry=registry,
        )
        self.limiter_degraded = Gauge(
            "penstock_rate_limiter_degraded",
            "1 while Redis is unreachable and this replica enforces its share of each limit alone (fail-open)",
            registry=registry,
        )
