"""The database the app runs on: the server DATABASE_URL names, or one embedded under PENSTOCK_HOME."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

from penstock.store.database import Database
from penstock.store.embedded import EmbeddedPostgres
from penstock.store.migrations import apply_migrations


class DatabaseRuntime:
    """Starts the embedded server when no URL is given, migrates the database, opens the pool; and undoes it."""

    def __init__(self, database_url: str | None, home: Path) -> None:
        self.embedded = None if database_url else EmbeddedPostgres(home / "pgdata")
        self._database_url = database_url
        self._database: Database | None = None

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("the database runtime is not started")
        return self._database

    async def start(self) -> Database:
        """Ready the database: raises DependencyUnavailable when it cannot be reached or started."""
        try:
            url = await self._url()
            # Migrate before the pool opens: pooled connections look up the pgvector types when created.
            await apply_migrations(url)
            database = Database(url)
            await database.open()
        except BaseException:
            await self._stop_embedded()
            raise
        self._database = database
        return database

    async def stop(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            await database.close()
        await self._stop_embedded()

    async def __aenter__(self) -> Database:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _url(self) -> str:
        if self.embedded is None:
            assert self._database_url is not None  # no embedded server means a URL was given
            return self._database_url
        # initdb and pg_ctl block for a second or two; keep the event loop free meanwhile.
        return await asyncio.to_thread(self.embedded.start)

    async def _stop_embedded(self) -> None:
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
