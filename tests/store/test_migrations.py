from __future__ import annotations

import asyncio

import psycopg
import pytest

from penstock.store.database import Database, connect
from penstock.store.migrations import Migration, applied_versions, apply_migrations, load_migrations


def test_shipped_migrations_are_numbered_from_one_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "init"


async def test_apply_records_every_version_and_a_rerun_is_a_no_op(blank_database_url: str) -> None:
    shipped = [m.version for m in load_migrations()]
    assert await apply_migrations(blank_database_url) == shipped
    assert await apply_migrations(blank_database_url) == []
    async with await connect(blank_database_url) as conn:
        assert await applied_versions(conn) == shipped
        cursor = await conn.execute("SELECT name, applied_at IS NOT NULL FROM schema_migrations")
        assert await cursor.fetchall() == [(m.name, True) for m in load_migrations()]


async def test_concurrent_starters_apply_each_migration_once(blank_database_url: str) -> None:
    results = await asyncio.gather(*(apply_migrations(blank_database_url) for _ in range(4)))
    shipped = [m.version for m in load_migrations()]
    assert sorted(results) == [[], [], [], shipped]


async def test_a_failing_migration_rolls_back_and_is_not_recorded(blank_database_url: str) -> None:
    good = Migration(1, "good", b"CREATE TABLE a (x int)")
    bad = Migration(2, "bad", b"CREATE TABLE b (x int); SELECT no_such_column FROM a")
    with pytest.raises(psycopg.errors.UndefinedColumn) as caught:
        await apply_migrations(blank_database_url, [good, bad])
    assert "0002_bad" in "".join(caught.value.__notes__)
    async with await connect(blank_database_url) as conn:
        assert await applied_versions(conn) == [1]
        cursor = await conn.execute("SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NOT NULL")
        assert await cursor.fetchone() == (True, False)


async def test_the_test_database_arrives_migrated(database: Database, database_url: str) -> None:
    assert await apply_migrations(database_url) == []
    async with database.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY(%s)",
            (["tenants", "api_keys", "usage_ledger"],),
        )
        assert await cursor.fetchone() == (3,)
