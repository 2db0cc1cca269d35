"""Where every request that got past authentication is settled, once.

It leaves one ledger row and counts against its tenant's budgets; the same row feeds the request
metrics, its stage timings become the trace's stage spans, and one log line records it. Answered
requests carry their tokens, cost and stage timings; refused ones (a 4xx after the caller was
known, a 429) carry the error code as their status and no tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from penstock.config import DeploymentConfig
from penstock.errors import PenstockError, clip
from penstock.observability.ledger_writer import LedgerWriter
from penstock.observability.logging import RequestLines
from penstock.observability.per_turn import PerTurn
from penstock.observability.redaction import redact
from penstock.observability.request_metrics import RequestMetrics
from penstock.observability.review import ReviewSampler
from penstock.observability.timing import StageTimer
from penstock.observability.tracing import Tracing
from penstock.router.quotas import QuotaBook
from penstock.store.ledger import LedgerRow
from penstock.types import Caller, Prepared, Retrieval, Usage

RECENT = 10_000


class Settlement:
    def __init__(
        self,
        deployments: Mapping[str, DeploymentConfig],
        writer: LedgerWriter | None = None,
        quotas: QuotaBook | None = None,
        metrics: RequestMetrics | None = None,
        tracing: Tracing | None = None,
        review: ReviewSampler | None = None,
        *,
        request_logs: bool = True,
    ) -> None:
        """Without a writer and a book (an engine worker keeps no state) there is no ledger or budget."""
        self._deployments = deployments
        self._writer = writer
        self._quotas = quotas
        self._metrics = metrics
        self._tracing = tracing or Tracing(None)
        self._review = review
        lines = RequestLines()
        self._log = lines if request_logs and lines.enabled else None
        self._observations = PerTurn(self._observe)
        # Requests settled lately, for feedback that arrives before their ledger rows are flushed.
        self._recent: OrderedDict[str, tuple[str, str | None]] = OrderedDict()

    def recent(self, request_id: str) -> tuple[str, str | None] | None:
        """(tenant, deployment) of a request this process settled lately."""
        return self._recent.get(request_id)

    def feedback(self, deployment: str | None, rating: int, escalated: bool) -> None:
        if self._metrics is not None:
            self._metrics.feedback(deployment or "", rating, escalated)

    def observe_pending(self) -> None:
        """Make now the observations (series, log lines) queued for the next loop turn."""
        self._observations.flush()

    def answered(
        self,
        prepared: Prepared,
        route: str,
        timer: StageTimer,
        status: str,
        usage: Usage,
        text: str = "",
        target: str = "",
    ) -> None:
        """`prepared` as the deployment that answered was sent it; `text`: the first choice's answer, for the
        review sample; `target`: the replica that answered, for the log line."""
        request, deployment = prepared.request, prepared.decision.deployment
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        cost = self.cost(deployment, prompt_tokens, completion_tokens)
        if self._quotas is not None:
            self._quotas.add(request.caller.tenant, prompt_tokens + completion_tokens, cost)
        row = LedgerRow(
            request_id=request.request_id,
            tenant=request.caller.tenant,
            key_id=request.caller.key_id,
            route=route,
            status=status,
            created_at=datetime.now(UTC),
            deployment=deployment,
            model=request.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            latency_ms=timer.total() * 1000,
            stage_ms=timer.milliseconds(),
            route_reason=prepared.decision.reason,
        )
        if self._review is not None and status == "ok":
            self._review.offer(prepared, route, text)
        retrieval = prepared.retrieval
        self._settle(
            row,
            timer,
            retrieval,
            route_reason=prepared.decision.reason,
            replica=target or None,
            retrieval_status=retrieval.status if retrieval else None,
            retrieval_degraded=list(retrieval.degraded) if retrieval else None,
            injection_flags=prepared.prompt.flagged_lines,
        )

    def embedded(
        self, request_id: str, caller: Caller, model: str, tokens: int, timer: StageTimer, status: str
    ) -> None:
        """`model`: the embedding model that answered, this process's own or a remote deployment."""
        if self._quotas is not None:
            self._quotas.add(caller.tenant, tokens, 0.0)
        row = LedgerRow(
            request_id=request_id,
            tenant=caller.tenant,
            key_id=caller.key_id,
            route="embeddings",
            status=status,
            created_at=datetime.now(UTC),
            deployment=model,
            model=model,
            prompt_tokens=tokens,
            latency_ms=timer.total() * 1000,
            stage_ms=timer.milliseconds(),
        )
        self._settle(row, timer)

    def refused(self, request_id: str, caller: Caller, route: str, model: str | None, error: PenstockError) -> None:
        status = error.code or error.type
        # The model as the client wrote it, which may be no model at all but anything they typed.
        named = redact(model) if model else None
        row = LedgerRow(request_id, caller.tenant, caller.key_id, route, status, datetime.now(UTC), model=named)
        self._settle(row, error_message=clip(error.message))  # our words, which may quote the client's

    @contextmanager
    def refusals(self, request_id: str, caller: Caller, route: str, model: str | None) -> Iterator[None]:
        """A request refused before it was answered still leaves its ledger row; one that failed after its
        admission was settled then (with what it had used), and is not recorded twice."""
        try:
            yield
        except PenstockError as exc:
            if request_id not in self._recent:
                self.refused(request_id, caller, route, model, exc)
            raise

    def cost(self, deployment: str, prompt_tokens: int, completion_tokens: int) -> float:
        config = self._deployments.get(deployment)
        if config is None:
            return 0.0
        return (config.input_cost_per_1k * prompt_tokens + config.output_cost_per_1k * completion_tokens) / 1000

    def _settle(
        self,
        row: LedgerRow,
        timer: StageTimer | None = None,
        retrieval: Retrieval | None = None,
        error_message: str | None = None,
        **details: object,
    ) -> None:
        """`details`: more of the request's own facts for its log line and trace (route reason, flags)."""
        if self._writer is not None:
            self._writer.record(row)
        self._recent[row.request_id] = (row.tenant, row.deployment)
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        if timer is not None and self._tracing.tracer is not None:  # attributes only for a trace to hold them
            self._tracing.record_stages(timer, _span_attributes(row, details))
        if self._metrics is not None or self._log is not None:
            self._observations.put(_Settled(row, timer, retrieval, self._tracing.trace_id(), details, error_message))

    def _observe(self, batch: list[_Settled]) -> None:
        """Settled requests' series and log lines, made a loop turn later (observability/per_turn.py)."""
        if self._metrics is not None:
            for settled in batch:
                self._metrics.observe(settled.row, settled.timer, settled.retrieval)
        if self._log is None:
            return
        for settled in batch:
            row = settled.row
            # Ours: ids we issued (or a client's trace id, which is hex), names from the configuration, our
            # statuses and reasons, numbers. A tenant's id is an operator's, an error may quote the client.
            others = {"tenant": row.tenant}
            if settled.error_message is not None:
                others["error_message"] = settled.error_message
            self._log.add(
                {
                    "request_id": row.request_id,
                    "trace_id": settled.trace_id,
                    "key_id": row.key_id,
                    "route": row.route,
                    "deployment": row.deployment,
                    "status": row.status,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "total_ms": round(row.latency_ms, 3) if row.latency_ms is not None else None,
                    "stage_ms": row.stage_ms,
                    **settled.details,
                },
                others,
            )
        self._log.write()


@dataclass(frozen=True, slots=True)
class _Settled:
    row: LedgerRow
    timer: StageTimer | None
    retrieval: Retrieval | None
    trace_id: str | None  # read while the request's span is current
    details: Mapping[str, object]
    error_message: str | None


def _span_attributes(row: LedgerRow, details: Mapping[str, object]) -> dict[str, str | int | float]:
    attributes: dict[str, str | int | float] = {
        "penstock.request_id": row.request_id,
        "penstock.tenant": row.tenant,
        "penstock.route": row.route,
        "penstock.status": row.status,
        "gen_ai.request.model": row.model or "",
        "penstock.deployment": row.deployment or "",
        "gen_ai.usage.input_tokens": row.prompt_tokens,
        "gen_ai.usage.output_tokens": row.completion_tokens,
        "penstock.cost": row.cost,
    }
    for name in ("route_reason", "retrieval_status"):
        if details.get(name) is not None:
            attributes[f"penstock.{name}"] = str(details[name])
    return attributes
