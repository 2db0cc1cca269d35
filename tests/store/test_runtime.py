from __future__ import annotations

from pathlib import Path

from penstock.store.migrations import applied_versions, load_migrations
from penstock.store.runtime import DatabaseRuntime


async def test_a_given_url_is_used_as_is_and_migrated(blank_database_url: str, tmp_path: Path) -> None:
    runtime = DatabaseRuntime(blank_database_url, tmp_path)
    async with runtime as database:
        assert runtime.embedded is None
        assert database.url == blank_database_url
        async with database.connection() as conn:
            assert await applied_versions(conn) == [m.version for m in load_migrations()]
    assert not (tmp_path / "pgdata").exists()
    assert not await database.ping()


async def test_no_url_starts_an_embedded_server_under_home(tmp_path: Path) -> None:
    runtime = DatabaseRuntime(None, tmp_path)
    async with runtime as database:
        assert await database.ping()
        assert (tmp_path / "pgdata" / "PG_VERSION").exists()
        async with database.connection() as conn:
            cursor = await conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'")
            assert await cursor.fetchone() == ("vector",)
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
