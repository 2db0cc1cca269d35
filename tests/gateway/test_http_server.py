"""Headers must arrive within their deadline (audit finding 11: one byte every 10 s held a connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from penstock.config import PolicyConfig, Settings
from penstock.gateway.http_server import HeaderDeadlineProtocol, deadline_protocol, server_config

DEADLINE_S = 0.5


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    config = uvicorn.Config(
        hello, host="127.0.0.1", port=0, http=deadline_protocol(DEADLINE_S), lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    await serving


async def closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drip: bytes) -> float:
    """Seconds until the server closes the connection, sending `drip` a byte every 0.1 s meanwhile."""
    started = time.monotonic()
    for byte in drip:
        writer.write(bytes([byte]))
        await writer.drain()
        try:
            if await asyncio.wait_for(reader.read(100), timeout=0.1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
    return float("inf")


async def test_headers_dripped_past_the_deadline_close_the_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    waited = await closed_after(reader, writer, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 50)
    assert waited < DEADLINE_S + 0.5
    writer.close()


async def test_a_kept_alive_connection_gets_a_fresh_deadline_per_request(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), timeout=5)).startswith(b"HTTP/1.1 200")
    waited = await closed_after(reader, writer, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 50)
    assert waited < DEADLINE_S + 0.5
    writer.close()


def test_serve_runs_uvicorn_with_the_header_deadline_and_the_connection_bound() -> None:
    """Audit finding 11: uvicorn's defaults have no header deadline and no bound on connections."""
    policy = PolicyConfig(header_timeout_s=3.0, max_connections=7)
    config = server_config(hello, Settings(policy=policy))
    assert issubclass(config.http, HeaderDeadlineProtocol) and config.http.header_timeout_s == 3.0
    assert config.limit_concurrency == 7
