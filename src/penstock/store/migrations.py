"""Versioned SQL migrations: applied in order at start, each once, each in its own transaction.

Files live in `penstock/store/migrations/` as `NNNN_name.sql`. A file may hold several statements;
it runs inside a transaction, so statements that refuse one (CREATE INDEX CONCURRENTLY) don't belong here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from penstock.errors import ConfigError
from penstock.store.database import connect

# Every Penstock process uses this key, so replicas starting together apply migrations one at a time.
_LOCK_KEY = 0x50656E73746F636B  # "Penstock" in ASCII
_FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")
_CREATE_TABLE = b"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: bytes


def load_migrations() -> list[Migration]:
    """The migrations shipped with Penstock, in version order."""
    directory = files("penstock.store") / "migrations"
    found = sorted(
        (_read(entry) for entry in directory.iterdir() if entry.name.endswith(".sql")),
        key=lambda m: m.version,
    )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"two migrations share a version number: {versions}")
    return found


async def apply_migrations(url: str, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Bring the database at `url` up to date; returns the versions this call applied."""
    wanted = load_migrations() if migrations is None else migrations
    # Closing the connection releases the session lock, whatever happens inside.
    async with await connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        await conn.execute(_CREATE_TABLE)
        done = set(await applied_versions(conn))
        pending = [m for m in wanted if m.version not in done]
        for migration in pending:
            await _apply(conn, migration)
    return [m.version for m in pending]


async def applied_versions(conn: AsyncConnection[Any]) -> list[int]:
    """Versions recorded in `schema_migrations`, ascending."""
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [int(row[0]) for row in await cursor.fetchall()]


async def _apply(conn: AsyncConnection[Any], migration: Migration) -> None:
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    except psycopg.Error as exc:
        exc.add_note(f"while applying migration {migration.version:04d}_{migration.name}")
        raise


def _read(entry: Traversable) -> Migration:
    match = _FILE_NAME.fullmatch(entry.name)
    if match is None:
        raise ConfigError(f"migration file {entry.name!r} is not named NNNN_name.sql")
    return Migration(version=int(match[1]), name=match[2], sql=entry.read_bytes())
