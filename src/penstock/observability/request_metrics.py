"""Per-request Prometheus metrics: stage latencies, end to end, first token, tokens, cost, outcomes.

Observed once per request, when it is settled (answered, failed or refused), from the same ledger
row the usage ledger gets, so the metrics and the ledger can never disagree about a request. The
engine reports its own view (queue, prefill, decode per sequence; KV usage; preemptions; prefix
hits) in engine_metrics.py; these are the gateway's, arrival to last byte.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from penstock.observability.engine_metrics import LATENCY_BUCKETS
from penstock.observability.labelled import Labelled
from penstock.observability.timing import StageTimer
from penstock.store.ledger import LedgerRow
from penstock.types import Retrieval


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._child = Labelled()

        def seconds(name: str, doc: str, labels: list[str]) -> Histogram:
            return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=registry)

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
        self.requests = Counter(
            "penstock_requests_total",
            "Requests past authentication, by outcome (ok, error, refused) and error type",
            ["route", "deployment", "tenant", "status", "error_type"],
            registry=registry,
        )
        self.tokens = Counter(
            "penstock_tokens_total",
            "Tokens in (prompt) and out (completion)",
            ["deployment", "tenant", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "penstock_cost_total", "Cost, a*T_in + b*T_out", ["deployment", "tenant"], registry=registry
        )
        self.retrieval = Counter(
            "penstock_retrieval_requests_total",
            "Retrievals by status (ok, empty, failed)",
            ["status"],
            registry=registry,
        )
        self.feedbacks = Counter(
            "penstock_feedback_total",
            "User feedback by deployment, verdict (positive, neutral, negative) and escalation",
            ["deployment", "verdict", "escalated"],
            registry=registry,
        )
        self.degradations = Counter(
            "penstock_retrieval_degradations_total",
            "Fallbacks taken in retrieval (rerank_timeout, rerank_failed, search_failed)",
            ["reason"],
            registry=registry,
        )

    def feedback(self, deployment: str, rating: int, escalated: bool) -> None:
        verdict = {-1: "negative", 0: "neutral", 1: "positive"}[rating]
        self.feedbacks.labels(deployment, verdict, str(escalated).lower()).inc()

    def observe(self, row: LedgerRow, timer: StageTimer | None = None, retrieval: Retrieval | None = None) -> None:
        deployment = row.deployment or ""
        status, error_type = _outcome(row.status)
        self._child(self.requests, row.route, deployment, row.tenant, status, error_type).inc()
        if row.prompt_tokens:
            self._child(self.tokens, deployment, row.tenant, "in").inc(row.prompt_tokens)
        if row.completion_tokens:
            self._child(self.tokens, deployment, row.tenant, "out").inc(row.completion_tokens)
        if row.cost:
            self._child(self.cost, deployment, row.tenant).inc(row.cost)
        if retrieval is not None:
            self._retrieval(retrieval)
        if timer is not None:
            self._timings(row, timer, deployment, status)

    def _timings(self, row: LedgerRow, timer: StageTimer, deployment: str, status: str) -> None:
        for name, seconds in timer.seconds.items():
            self._child(self.stage, name, row.route).observe(seconds)
        self._child(self.request, row.route, deployment, status).observe(timer.total())
        ttft = timer.ttft()
        if ttft is not None:
            self._child(self.ttft, deployment).observe(ttft)
        decode = timer.seconds.get("decode")
        if decode and row.completion_tokens > 1:
            self._child(self.tpot, deployment).observe(decode / (row.completion_tokens - 1))

    def _retrieval(self, retrieval: Retrieval) -> None:
        self.retrieval.labels(retrieval.status).inc()
        for reason in retrieval.degraded:
            self.degradations.labels(reason).inc()


def _outcome(status: str) -> tuple[str, str]:
    """A ledger status as (outcome, error type): refused rows carry their error code as the status."""
    if status in ("ok", "error"):
        return status, "" if status == "ok" else "internal"
    return "refused", status
