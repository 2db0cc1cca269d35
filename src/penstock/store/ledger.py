"""The usage ledger in PostgreSQL: one row per request, written in batches, summed for budgets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from psycopg.types.json import Jsonb

from penstock.store.database import Database

_INSERT = (
    "INSERT INTO usage_ledger (request_id, tenant_id, key_id, deployment, model, route, prompt_tokens,"
    " completion_tokens, cost, latency_ms, stage_ms, status, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    request_id: str
    tenant: str
    key_id: str | None
    route: str
    status: str
    created_at: datetime
    deployment: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_ms: float | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Spend:
    tokens: int = 0
    cost: float = 0.0

    def add(self, tokens: int, cost: float) -> None:
        self.tokens += tokens
        self.cost += cost


@dataclass(slots=True)
class TenantSpend:
    """What a tenant has used since the start of the current UTC day and month."""

    day: Spend = field(default_factory=Spend)
    month: Spend = field(default_factory=Spend)


class LedgerStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, rows: Sequence[LedgerRow]) -> None:
        """One round trip for the batch; a row already written (a retried batch) is skipped."""
        async with self._db.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(_INSERT, [_values(row) for row in rows])

    async def spend_since(self, day_start: datetime, month_start: datetime) -> dict[str, TenantSpend]:
        query = (
            "SELECT tenant_id,"
            " coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE created_at >= %(day)s), 0),"
            " coalesce(sum(cost) FILTER (WHERE created_at >= %(day)s), 0),"
            " sum(prompt_tokens + completion_tokens), sum(cost)"
            " FROM usage_ledger WHERE created_at >= %(month)s GROUP BY tenant_id"
        )
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query, {"day": day_start, "month": month_start})).fetchall()
        return {
            tenant: TenantSpend(Spend(int(d_tokens), float(d_cost)), Spend(int(m_tokens), float(m_cost)))
            for tenant, d_tokens, d_cost, m_tokens, m_cost in rows
        }


def _values(row: LedgerRow) -> tuple[object, ...]:
    return (
        row.request_id,
        row.tenant,
        row.key_id,
        row.deployment,
        row.model,
        row.route,
        row.prompt_tokens,
        row.completion_tokens,
        row.cost,
        row.latency_ms,
        Jsonb(row.stage_ms),
        row.status,
        row.created_at,
    )
