"""Deployments and routes written through the admin API, in PostgreSQL: the control plane's store.

Rows overlay the config file's by name; a row without a body is a deletion. Every write takes the next
change number, and replicas poll for rows above the highest they have seen (router/control.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from penstock.store.database import Database
from penstock.store.storable import storable_json

Kind = Literal["deployment", "route"]


@dataclass(frozen=True, slots=True)
class RouterObject:
    kind: Kind
    name: str
    body: dict[str, Any] | None  # None: deleted


class RouterObjectStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def put(self, kind: Kind, name: str, body: dict[str, Any] | None) -> None:
        """Create or replace one (None deletes it), as the next change."""
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO router_objects (kind, name, body) VALUES (%s, %s, %s) ON CONFLICT (kind, name) DO UPDATE"
                " SET body = EXCLUDED.body, change = nextval('router_changes'), updated_at = now()",
                (kind, name, None if body is None else storable_json(body)),
            )

    async def changes(self, after: int) -> tuple[list[RouterObject], int]:
        """Rows changed since `after`, oldest first, and the change number to poll from next."""
        async with self._db.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT kind, name, body, change FROM router_objects WHERE change > %s ORDER BY change", (after,)
                )
            ).fetchall()
        last = max((row[3] for row in rows), default=after)
        return [RouterObject(row[0], row[1], row[2]) for row in rows], last
