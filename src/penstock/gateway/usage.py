"""Every request that got past authentication leaves one ledger row, and counts against its tenant's budgets.

Answered requests carry their tokens, cost and stage timings; refused ones (a 4xx after the caller
was known, a 429) carry the error code as their status and no tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

from penstock.config import DeploymentConfig
from penstock.errors import PenstockError
from penstock.gateway.ledger_writer import LedgerWriter
from penstock.gateway.quotas import QuotaBook
from penstock.observability.timing import StageTimer
from penstock.pipeline import Prepared
from penstock.store.ledger import LedgerRow
from penstock.types import Caller


class UsageRecorder:
    def __init__(
        self,
        deployments: Mapping[str, DeploymentConfig],
        writer: LedgerWriter | None = None,
        quotas: QuotaBook | None = None,
    ) -> None:
        """Without a writer and a book (an engine worker keeps no state) recording does nothing."""
        self._deployments = deployments
        self._writer = writer
        self._quotas = quotas

    def check_budget(self, caller: Caller) -> None:
        if self._quotas is not None:
            self._quotas.check(caller)

    def answered(self, prepared: Prepared, route: str, timer: StageTimer, status: str, completion_tokens: int) -> None:
        request, deployment = prepared.request, prepared.decision.deployment
        prompt_tokens = len(prepared.prompt.token_ids)
        cost = self.cost(deployment, prompt_tokens, completion_tokens)
        if self._quotas is not None:
            self._quotas.add(request.caller.tenant, prompt_tokens + completion_tokens, cost)
        self._write(
            LedgerRow(
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
            )
        )

    def embedded(
        self, request_id: str, caller: Caller, model: str, tokens: int, timer: StageTimer, status: str
    ) -> None:
        if self._quotas is not None:
            self._quotas.add(caller.tenant, tokens, 0.0)
        self._write(
            LedgerRow(
                request_id=request_id,
                tenant=caller.tenant,
                key_id=caller.key_id,
                route="embeddings",
                status=status,
                created_at=datetime.now(UTC),
                model=model,
                prompt_tokens=tokens,
                latency_ms=timer.total() * 1000,
                stage_ms=timer.milliseconds(),
            )
        )

    def refused(self, request_id: str, caller: Caller, route: str, model: str | None, error: PenstockError) -> None:
        status = error.code or error.type
        row = LedgerRow(request_id, caller.tenant, caller.key_id, route, status, datetime.now(UTC), model=model)
        self._write(row)

    @contextmanager
    def refusals(self, request_id: str, caller: Caller, route: str, model: str | None) -> Iterator[None]:
        """A request refused before it was answered still leaves its ledger row."""
        try:
            yield
        except PenstockError as exc:
            self.refused(request_id, caller, route, model, exc)
            raise

    def cost(self, deployment: str, prompt_tokens: int, completion_tokens: int) -> float:
        config = self._deployments.get(deployment)
        if config is None:
            return 0.0
        return (config.input_cost_per_1k * prompt_tokens + config.output_cost_per_1k * completion_tokens) / 1000

    def _write(self, row: LedgerRow) -> None:
        if self._writer is not None:
            self._writer.record(row)
