"""The router's state as Prometheus series, read at scrape time from the objects that hold it: each remote
replica's breaker, load and calls, the retry budget's refusals, the adaptive throttle's, and the decisions
routes made, by reason."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from penstock.router.breaker import BreakerState
from penstock.router.deployment_queue import TIERS
from penstock.router.fleet import Fleet
from penstock.router.ladder import Ladder
from penstock.store.urls import mask_password

STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class RouterCollector(Collector):
    def __init__(self, fleet: Fleet, ladder: Ladder) -> None:
        self._fleet = fleet
        self._ladder = ladder

    def collect(self) -> Iterator[Metric]:
        labels = ["deployment", "replica"]
        state = GaugeMetricFamily(
            "penstock_upstream_breaker_state", "A replica's circuit: 0 closed, 1 half-open, 2 open", labels=labels
        )
        in_flight = GaugeMetricFamily("penstock_upstream_in_flight", "Requests in flight to a replica", labels=labels)
        healthy = GaugeMetricFamily("penstock_upstream_healthy", "1 if the last health check passed", labels=labels)
        calls = CounterMetricFamily("penstock_upstream_calls", "Calls sent to a replica", labels=labels)
        failures = CounterMetricFamily("penstock_upstream_failures", "Calls a replica failed", labels=labels)
        opened = CounterMetricFamily(
            "penstock_upstream_breaker_opened", "Times a replica's circuit opened", labels=labels
        )
        for deployment in self._fleet.remote:
            for replica in deployment.replicas.replicas:
                at = [deployment.name, mask_password(replica.url)]
                state.add_metric(at, STATE_VALUES[replica.breaker.state])
                in_flight.add_metric(at, replica.in_flight)
                healthy.add_metric(at, int(replica.healthy))
                calls.add_metric(at, replica.calls)
                failures.add_metric(at, replica.failures)
                opened.add_metric(at, replica.breaker.opened)
        decisions = CounterMetricFamily(
            "penstock_route_decisions",
            "Answers begun, by the model asked, the deployment that answered and why (requested, default,"
            " rule:<name>, weight, overflow, fallback)",
            labels=["model", "deployment", "reason"],
        )
        for (model, deployment, reason), count in self._ladder.decisions.items():
            decisions.add_metric([model, deployment, reason], count)
        checked = CounterMetricFamily(
            "penstock_structured_output",
            "JSON-schema answers checked here for upstreams that cannot constrain decoding: valid, repaired"
            " (right when asked again), invalid",
            labels=["deployment", "outcome"],
        )
        throttled = CounterMetricFamily(
            "penstock_upstream_throttled",
            "Requests kept back from a deployment that refuses most of its load (adaptive throttling)",
            labels=["deployment"],
        )
        for deployment in self._fleet.remote:
            for outcome, count in deployment.schema_outcomes.items():
                checked.add_metric([deployment.name, outcome], count)
            throttled.add_metric([deployment.name], deployment.throttle.refused)
        refused = CounterMetricFamily("penstock_retries_refused", "Retries the retry budget did not allow")
        refused.add_metric([], self._ladder.budget.refused)
        yield from (state, in_flight, healthy, calls, failures, opened, decisions, checked, throttled, refused)
        yield from self._queues()

    def _queues(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "penstock_queue_running", "Requests holding one of a deployment's slots", labels=["deployment"]
        )
        slots = GaugeMetricFamily(
            "penstock_queue_open_slots",
            "A deployment's slots open now (fewer than its concurrency while a TPOT target holds them back)",
            labels=["deployment"],
        )
        waiting = GaugeMetricFamily(
            "penstock_queue_waiting", "Requests waiting for a deployment's slot", labels=["deployment", "tier"]
        )
        wait = GaugeMetricFamily(
            "penstock_queue_estimated_wait_seconds",
            "How long an interactive request arriving now is estimated to wait for a slot",
            labels=["deployment"],
        )
        refused = CounterMetricFamily(
            "penstock_queue_refused",
            "Requests a deployment's queue refused (429): full, wait (would not start in time), shed (batch made"
            " room for interactive), timeout (waited max_wait_s)",
            labels=["deployment", "reason"],
        )
        for name, deployment in self._fleet.deployments.items():
            queue = deployment.queue
            running.add_metric([name], queue.running)
            slots.add_metric([name], queue.limit.open)
            for tier in TIERS:
                waiting.add_metric([name, tier], queue.waiting(tier))
            wait.add_metric([name], queue.estimate(TIERS["interactive"]))
            for reason, count in queue.refused.items():
                refused.add_metric([name, reason], count)
        yield from (running, slots, waiting, wait, refused)
