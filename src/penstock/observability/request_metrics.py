"""Per-request Prometheus metrics: stage latencies, end to end, first token, tokens, cost, outcomes.

Observed once per request, when it is settled (answered, failed or refused; made a loop turn later,
observability/settlement.py), from the same ledger row the usage ledger gets, so the metrics and the ledger
can never disagree about a request. The engine reports its own view (queue, prefill, decode per
sequence; KV usage; preemptions; prefix hits) in engine_metrics.py; these are the gateway's, arrival
to last byte, written by its event loop only, hence lean_metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from penstock.observability.engine_metrics import LATENCY_BUCKETS
from penstock.observability.lean_metrics import CounterSeries, HistogramSeries, LeanCounter, LeanHistogram
from penstock.observability.timing import StageTimer
from penstock.store.ledger import LedgerRow
from penstock.types import Retrieval


@dataclass(frozen=True, slots=True)
class _OutcomeSeries:
    requests: CounterSeries
    tokens_in: CounterSeries
    tokens_out: CounterSeries
    cost: CounterSeries
    request: HistogramSeries
    ttft: HistogramSeries
    tpot: HistogramSeries
    stages: dict[str, HistogramSeries] = field(default_factory=dict)  # by stage name, for this route


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._by_outcome: dict[tuple[str, str, str, str], _OutcomeSeries] = {}

        def seconds(name: str, doc: str, labels: list[str]) -> LeanHistogram:
            return LeanHistogram(name, doc, labels, registry, LATENCY_BUCKETS)

        def counter(name: str, doc: str, labels: list[str]) -> LeanCounter:
            return LeanCounter(name, doc, labels, registry)

        self.stage = seconds(
            "penstock_stage_seconds",
            "Time in one pipeline stage (gateway, route, retrieval and retrieval.*, context, admission, prefill,"
            " decode, post)",
            ["stage", "route"],
        )
        self.request = seconds("penstock_request_seconds", "Arrival to last byte", ["route", "deployment", "status"])
        self.ttft = seconds(
            "penstock_request_time_to_first_token_seconds", "Arrival at the gateway to the first token", ["deployment"]
        )
        self.tpot = seconds(
            "penstock_time_per_output_token_seconds", "Decode time over the tokens after the first", ["deployment"]
        )
        self.requests = counter(
            "penstock_requests_total",
            "Requests past authentication, by outcome (ok, error, refused) and error type",
            ["route", "deployment", "tenant", "status", "error_type"],
        )
        self.tokens = counter(
            "penstock_tokens_total",
            "Tokens in (prompt) and out (completion)",
            ["deployment", "tenant", "direction"],
        )
        self.cost = counter("penstock_cost_total", "Cost, a*T_in + b*T_out", ["deployment", "tenant"])
        self.retrieval = counter(
            "penstock_retrieval_requests_total",
            "Retrievals by status (ok, empty, failed)",
            ["status"],
        )
        self.feedbacks = counter(
            "penstock_feedback_total",
            "User feedback by deployment, verdict (positive, neutral, negative) and escalation",
            ["deployment", "verdict", "escalated"],
        )
        self.degradations = counter(
            "penstock_retrieval_degradations_total",
            "Fallbacks taken in retrieval (rerank_timeout, rerank_failed, search_failed)",
            ["reason"],
        )

    def feedback(self, deployment: str, rating: int, escalated: bool) -> None:
        verdict = {-1: "negative", 0: "neutral", 1: "positive"}[rating]
        self.feedbacks.labels(deployment, verdict, str(escalated).lower()).inc()

    def observe(self, row: LedgerRow, timer: StageTimer | None = None, retrieval: Retrieval | None = None) -> None:
        series = self._outcome_series(row.route, row.deployment or "", row.tenant, row.status)
        series.requests.inc()
        if row.prompt_tokens:
            series.tokens_in.inc(row.prompt_tokens)
        if row.completion_tokens:
            series.tokens_out.inc(row.completion_tokens)
        if row.cost:
            series.cost.inc(row.cost)
        if retrieval is not None:
            self._retrieval(retrieval)
        if timer is not None:
            self._timings(row, timer, series)

    def _timings(self, row: LedgerRow, timer: StageTimer, series: _OutcomeSeries) -> None:
        stages = series.stages
        for name, seconds in timer.seconds.items():
            stage = stages.get(name)
            if stage is None:
                stage = stages[name] = self.stage.labels(name, row.route)
            stage.observe(seconds)
        series.request.observe(row.latency_ms / 1000 if row.latency_ms is not None else timer.total())
        ttft = timer.ttft()
        if ttft is not None:
            series.ttft.observe(ttft)
        decode = timer.seconds.get("decode")
        if decode and row.completion_tokens > 1:
            series.tpot.observe(decode / (row.completion_tokens - 1))

    def _outcome_series(self, route: str, deployment: str, tenant: str, ledger_status: str) -> _OutcomeSeries:
        """Every series one kind of request touches, looked up once per kind instead of once per metric."""
        key = (route, deployment, tenant, ledger_status)
        series = self._by_outcome.get(key)
        if series is None:
            status, error_type = _outcome(ledger_status)
            series = self._by_outcome[key] = _OutcomeSeries(
                requests=self.requests.labels(route, deployment, tenant, status, error_type),
                tokens_in=self.tokens.labels(deployment, tenant, "in"),
                tokens_out=self.tokens.labels(deployment, tenant, "out"),
                cost=self.cost.labels(deployment, tenant),
                request=self.request.labels(route, deployment, status),
                ttft=self.ttft.labels(deployment),
                tpot=self.tpot.labels(deployment),
            )
        return series

    def _retrieval(self, retrieval: Retrieval) -> None:
        self.retrieval.labels(retrieval.status).inc()
        for reason in retrieval.degraded:
            self.degradations.labels(reason).inc()


def _outcome(status: str) -> tuple[str, str]:
    """A ledger status as (outcome, error type): refused rows carry their error code as the status."""
    if status in ("ok", "error"):
        return status, "" if status == "ok" else "internal"
    return "refused", status
