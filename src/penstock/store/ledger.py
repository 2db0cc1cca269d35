"""The usage ledger in PostgreSQL: one row per request, written in batches; budgets read the daily
totals the database keeps beside it (migration 0005)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from penstock.store.database import Database
from penstock.store.storable import storable_json

# The batch travels as one JSON array of LedgerRow objects (orjson writes dataclasses by field name), one
# parameter that costs the gateway a few microseconds a row where a parameter per column cost it 12, and
# lands in one statement, so migration 0005's trigger adds the batch to the daily totals once.
_INSERT = (
    "INSERT INTO usage_ledger (request_id, tenant_id, key_id, deployment, model, route, prompt_tokens,"
    " completion_tokens, cost, latency_ms, stage_ms, status, created_at, route_reason)"
    " SELECT request_id, tenant, key_id, deployment, model, route, prompt_tokens, completion_tokens, cost,"
    " latency_ms, stage_ms, status, created_at, route_reason"
    " FROM jsonb_to_recordset(%s::jsonb) AS r(request_id text, tenant text, key_id text, deployment text, model text,"
    " route text, prompt_tokens int, completion_tokens int, cost numeric, latency_ms float8, stage_ms jsonb,"
    " status text, created_at timestamptz, route_reason text)"
    " ON CONFLICT (request_id) DO NOTHING"
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
    route_reason: str | None = None  # why this deployment (the x-penstock-route header's reason)

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


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One tenant's use of one deployment on one UTC day."""

    tenant: str
    day: date
    deployment: str | None
    model: str | None
    requests: int
    errors: int  # every outcome but "ok"
    prompt_tokens: int
    completion_tokens: int
    cost: float


@dataclass(frozen=True, slots=True)
class Quality:
    """Online quality of one deployment from its users' feedback."""

    deployment: str
    requests: int  # answered ("ok")
    rated: int
    negative: int
    escalated: int
    failed: int  # rated bad or escalated (or both)
    cost: float

    @property
    def successes(self) -> int:
        """Answered, and neither rated bad nor handed to a human."""
        return self.requests - self.failed

    def to_dict(self) -> dict[str, object]:
        share = lambda n: round(n / self.requests, 4) if self.requests else None  # noqa: E731
        return {
            "deployment": self.deployment,
            "requests": self.requests,
            "rated": self.rated,
            "task_success_rate": share(self.successes),
            "escalation_rate": share(self.escalated),
            "negative_feedback_rate": round(self.negative / self.rated, 4) if self.rated else None,
            "cost_per_successful_request": round(self.cost / self.successes, 8) if self.successes > 0 else None,
        }


class LedgerStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, rows: Sequence[LedgerRow]) -> None:
        """One statement for the batch; a row already written (a retried batch) is skipped."""
        if not rows:
            return
        async with self._db.connection() as conn:
            await conn.execute(_INSERT, (storable_json(rows),))

    async def tenant_spend(self, day: date, month_start: date) -> dict[str, TenantSpend]:
        """Each tenant's spend on the UTC day `day` and from `month_start` on, from the daily totals."""
        query = (
            "SELECT tenant_id,"
            " coalesce(sum(tokens) FILTER (WHERE day = %(day)s), 0),"
            " coalesce(sum(cost) FILTER (WHERE day = %(day)s), 0), sum(tokens), sum(cost)"
            " FROM tenant_daily_spend WHERE day >= %(month)s GROUP BY tenant_id"
        )
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query, {"day": day, "month": month_start})).fetchall()
        return {
            tenant: TenantSpend(Spend(int(d_tokens), float(d_cost)), Spend(int(m_tokens), float(m_cost)))
            for tenant, d_tokens, d_cost, m_tokens, m_cost in rows
        }

    async def usage(self, tenant: str | None, start: datetime, end: datetime) -> list[UsageLine]:
        """Use per tenant (one, or all for None), UTC day and deployment, for rows in [start, end)."""
        query = (
            "SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day, deployment, model, count(*),"
            " count(*) FILTER (WHERE status <> 'ok'), sum(prompt_tokens), sum(completion_tokens), sum(cost)"
            " FROM usage_ledger WHERE created_at >= %(start)s AND created_at < %(end)s"
            " AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
            " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        )
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query, {"tenant": tenant, "start": start, "end": end})).fetchall()
        return [
            UsageLine(t, d, dep, m, int(n), int(e), int(pt), int(ct), float(c))
            for t, d, dep, m, n, e, pt, ct, c in rows
        ]

    async def quality(self, tenant: str | None, start: datetime, end: datetime) -> list[Quality]:
        """Per deployment: answered requests, feedback on them, and what they cost."""
        query = (
            "SELECT l.deployment, count(*), count(f.request_id), count(*) FILTER (WHERE f.rating < 0),"
            " count(*) FILTER (WHERE f.escalated), count(*) FILTER (WHERE f.rating < 0 OR f.escalated),"
            " coalesce(sum(l.cost), 0)"
            " FROM usage_ledger l LEFT JOIN feedback f ON f.request_id = l.request_id AND f.tenant_id = l.tenant_id"
            " WHERE l.status = 'ok' AND l.deployment IS NOT NULL AND l.created_at >= %(start)s"
            " AND l.created_at < %(end)s AND (%(tenant)s::text IS NULL OR l.tenant_id = %(tenant)s)"
            " GROUP BY 1 ORDER BY 1"
        )
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query, {"tenant": tenant, "start": start, "end": end})).fetchall()
        return [Quality(d, *(int(v) for v in counts), float(c)) for d, *counts, c in rows]

    async def owner(self, request_id: str) -> tuple[str, str | None] | None:
        """The tenant and deployment of a ledgered request."""
        query = "SELECT tenant_id, deployment FROM usage_ledger WHERE request_id = %s"
        async with self._db.connection() as conn:
            row = await (await conn.execute(query, (request_id,))).fetchone()
        return (row[0], row[1]) if row else None
