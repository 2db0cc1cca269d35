"""The review sample: a fraction of prompts and completions, redacted before they get here; admin reads only."""

from __future__ import annotations

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


class ReviewStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, sample: ReviewSample) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO review_samples (request_id, tenant_id, deployment, route, prompt, completion)"
                " VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (request_id) DO NOTHING",
                (
                    sample.request_id,
                    sample.tenant,
                    sample.deployment,
                    sample.route,
                    storable_json(sample.prompt),
                    sample.completion,
                ),
            )

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
