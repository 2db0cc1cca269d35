"""The PostgreSQL connection pool the app owns, and a one-shot synchronous check for `penstock doctor`."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types import TypeInfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from penstock.errors import ConfigError, DependencyUnavailable, PenstockError
from penstock.store.storable import nul_free_text
from penstock.store.urls import mask_password


class Database:
    """A pool of connections to one PostgreSQL database: open it once at start, close it at shutdown."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._acquire_timeout_s = acquire_timeout_s
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    async def open(self) -> None:
        """Connect, or raise DependencyUnavailable naming the (masked) URL and the server's reason."""
        if self._pool is not None:
            return
        # One direct connection first: the pool only says "timed out", libpq says why.
        probe = await connect(self.url, timeout_s=self._connect_timeout_s)
        await probe.close()
        pool = AsyncConnectionPool(
            self.url,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._acquire_timeout_s,
            kwargs={"connect_timeout": _libpq_timeout(self._connect_timeout_s)},
            configure=_configure_connection,
            name="penstock",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout_s)
        except PoolTimeout as exc:
            await pool.close()
            raise _unreachable(self.url, exc) from exc
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """Whether the database answers `SELECT 1` within `timeout_s`; never raises (for /readyz)."""
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(timeout_s), self._pool.connection(timeout=timeout_s) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError):
            return False
        return True

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A pooled connection; its transaction commits on success and rolls back on error."""
        if self._pool is None:
            raise DependencyUnavailable("the database is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise DependencyUnavailable(f"no database connection free within {self._acquire_timeout_s}s") from exc

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@dataclass(frozen=True, slots=True)
class DatabaseCheck:
    """What `penstock doctor` reports about a database it could reach."""

    server_version: str
    pgvector_available: bool


async def connect(url: str, *, timeout_s: float = 5.0, autocommit: bool = False) -> AsyncConnection[TupleRow]:
    """One connection outside any pool; raises DependencyUnavailable or ConfigError with a clear message."""
    try:
        return await AsyncConnection.connect(url, autocommit=autocommit, connect_timeout=_libpq_timeout(timeout_s))
    except psycopg.Error as exc:
        raise _unreachable(url, exc) from exc


def check_database(url: str, *, timeout_s: float = 3.0) -> DatabaseCheck:
    """Connect once, synchronously, and report the server version and whether pgvector can be installed."""
    try:
        with psycopg.connect(url, connect_timeout=_libpq_timeout(timeout_s)) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            vector = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    except psycopg.Error as exc:
        raise _unreachable(url, exc) from exc
    return DatabaseCheck(server_version=version[0] if version else "unknown", pgvector_available=bool(vector))


async def _configure_connection(conn: AsyncConnection[Any]) -> None:
    """Teach each new pooled connection the pgvector types, once migration 0001 has created them, and to
    drop the NUL characters PostgreSQL's text cannot hold."""
    nul_free_text(conn)
    if await TypeInfo.fetch(conn, "vector") is not None:
        await register_vector_async(conn)
    # The type lookups opened a transaction; the pool only accepts idle connections.
    await conn.rollback()


def _unreachable(url: str, exc: psycopg.Error) -> PenstockError:
    where = mask_password(url)
    if isinstance(exc, psycopg.ProgrammingError):
        return ConfigError(f"invalid database URL {where}: {exc}")
    reason = str(exc).strip() or type(exc).__name__
    return DependencyUnavailable(f"cannot connect to the database at {where}: {reason}")


def _libpq_timeout(timeout_s: float) -> int:
    # libpq counts whole seconds and treats anything under 2 as 2.
    return max(2, math.ceil(timeout_s))
