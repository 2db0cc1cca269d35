"""The review sample: a fraction of prompts and completions, redacted before they get here; admin reads only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from penstock.store.database import Database
from penstock.store.storable import storable_json


@dataclass(frozen=True, slots=True)
class ReviewSample:
    request_id: str
    tenant: str
    deployment: str | None
    route: str
    prompt: list[dict[str, str]]  # the request's messages (role, content), redacted
    completion: str  # redacted
    created_at: datetime | None = None


# The batch as one JSON array of ReviewSamples (as the ledger's rows travel, store/ledger.py).
_INSERT = (
    "INSERT INTO review_samples (request_id, tenant_id, deployment, route, prompt, completion)"
    " SELECT request_id, tenant, deployment, route, prompt, completion FROM jsonb_to_recordset(%s::jsonb)"
    " AS r(request_id text, tenant text, deployment text, route text, prompt jsonb, completion text)"
    " ON CONFLICT (request_id) DO NOTHING"
)


class ReviewStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, samples: Sequence[ReviewSample]) -> None:
        """One statement for the batch; a sample already written is skipped."""
        if samples:
            async with self._db.connection() as conn:
                await conn.execute(_INSERT, (storable_json(samples),))

    async def sample(self, limit: int, tenant: str | None = None, since: datetime | None = None) -> list[ReviewSample]:
        """Up to `limit` samples drawn at random (newer than `since`, of `tenant`, when given)."""
        query = (
            "SELECT request_id, tenant_id, deployment, route, prompt, completion, created_at FROM review_samples"
            " WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
            " AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s) ORDER BY random() LIMIT %(limit)s"
        )
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query, {"tenant": tenant, "since": since, "limit": limit})).fetchall()
        return [ReviewSample(*row) for row in rows]
