"""Small helpers the tests share; fixtures live in conftest.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import redis
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


class RedisServer:
    """A redis-server of the test's own on a loopback port, without persistence; stop and start it at will."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.workdir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen([*args, "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT)
        self._wait()

    def stop(self) -> None:
        """Kill it, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, timeout_s: float = 10.0) -> None:
        assert self._process is not None
        log = self.workdir / "redis.log"
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{log.read_text()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not answer PING within {timeout_s}s:\n{log.read_text()}")


@asynccontextmanager
async def database_refusing(postgres_server: str, database_url: str) -> AsyncIterator[None]:
    """The test database cut off: no new connections, the open ones terminated."""
    name = urlsplit(database_url).path.lstrip("/")
    async with await connect(postgres_server, autocommit=True) as admin:
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
