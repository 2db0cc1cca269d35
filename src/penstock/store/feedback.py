"""Users' verdicts on answered requests: one per request, a later one replacing it."""

from __future__ import annotations

from dataclasses import dataclass

from penstock.store.database import Database

_UPSERT = (
    "INSERT INTO feedback (request_id, tenant_id, key_id, rating, escalated, comment) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (request_id) DO UPDATE SET key_id = excluded.key_id, rating = excluded.rating,"
    " escalated = excluded.escalated, comment = excluded.comment, created_at = now()"
    " WHERE feedback.tenant_id = excluded.tenant_id"
)


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    tenant: str
    key_id: str | None
    rating: int  # -1 bad, 0 neutral, 1 good
    escalated: bool = False
    comment: str = ""


class FeedbackStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def record(self, feedback: Feedback) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                _UPSERT,
                (
                    feedback.request_id,
                    feedback.tenant,
                    feedback.key_id,
                    feedback.rating,
                    feedback.escalated,
                    feedback.comment,
                ),
            )
