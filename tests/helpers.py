"""Small helpers the tests share; fixtures live in conftest.py."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import uuid4

from psycopg import sql

from penstock.store.database import connect
from penstock.store.urls import with_database


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def scratch_database(
    server_url: str, *, template: str | None = None, name: str | None = None
) -> AsyncIterator[str]:
    """A new database on `server_url`'s server, copied from `template` if given; yields its URL, then drops it."""
    name = name or f"t_{uuid4().hex}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    await _run(server_url, create)
    try:
        yield with_database(server_url, name)
    finally:
        await _run(server_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def _run(server_url: str, statement: sql.Composable) -> None:
    # CREATE and DROP DATABASE refuse to run inside a transaction.
    async with await connect(server_url, autocommit=True) as conn:
        await conn.execute(statement)
