from prometheus_client import CollectorRegistry

from penstock.gateway.edge import HttpMetrics


def responses(registry: CollectorRegistry, code: str) -> float | None:
    labels = {"method": "POST", "route": "/v1/chat/completions", "code": code}
    return registry.get_sample_value("penstock_http_responses_total", labels)


async def test_an_exchange_is_counted_at_the_next_loop_turn_or_when_a_scrape_asks() -> None:
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    metrics.observe("POST", "/v1/chat/completions", 200, 0.01)
    metrics.observe("POST", "/v1/chat/completions", 429, 0.002)
    assert responses(registry, "200") is None  # still this turn
    metrics.observe_pending()
    assert responses(registry, "200") == 1 and responses(registry, "429") == 1
    labels = {"method": "POST", "route": "/v1/chat/completions"}
    assert registry.get_sample_value("penstock_http_request_seconds_count", labels) == 2


def test_without_a_running_loop_an_exchange_is_counted_at_once() -> None:
    registry = CollectorRegistry()
    HttpMetrics(registry).observe("POST", "/v1/chat/completions", 200, 0.01)
    assert responses(registry, "200") == 1
