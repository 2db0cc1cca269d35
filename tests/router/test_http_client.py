"""The upstream HTTP client against a raw server that writes exactly the bytes each case needs, on asyncio's
own loop and on uvloop's (what `penstock serve` runs): framing, keep-alive, stale connections, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from penstock.router.http_client import ConnectError, Disconnected, HttpClient
from tests.helpers import free_port

SSE = b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


class RawServer:
    """Answers each request on a connection with the next of `answers` (bytes, or a callable given the writer)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[bytes] = []
        self.answer: Callable[[asyncio.StreamWriter], Awaitable[None]] | bytes = b""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def drop_all(self) -> None:
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(h[15:]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                if callable(self.answer):
                    await self.answer(writer)
                else:
                    writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes, *, chunks: bool = False) -> bytes:
    if chunks:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*body.split(b"\n\n"))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def lines(client: HttpClient, url: str) -> list[bytes]:
    response = await client.request("POST", url, b'{"x": 1}', {"Content-Type": "application/json"})
    got = []
    while line := await response.readline():
        got.append(line)
    response.release()
    return got


async def keeps_connections_alive_and_reads_both_framings() -> None:
    async with RawServer() as server:
        client = HttpClient()
        server.answer = ok(SSE, chunks=True)
        first = await lines(client, server.url + "/v1/chat/completions")
        server.answer = ok(SSE)
        second = await lines(client, server.url + "/v1/chat/completions")
        assert b"".join(first).replace(b"\n", b"") == b"data: onedata: twodata: [DONE]"
        assert b"".join(second) == SSE
        assert server.connections == 1  # the second request reused the first's connection
        request = server.requests[0]
        assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and request.endswith(b'{"x": 1}')
        assert b"Host: 127.0.0.1:%d\r\n" % server.port in request
        client.close()


async def reads_a_body_that_ends_with_the_connection() -> None:
    async with RawServer() as server:
        client = HttpClient()

        async def then_close(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + SSE)
            await writer.drain()
            writer.close()

        server.answer = then_close
        assert b"".join(await lines(client, server.url + "/x")) == SSE
        client.close()


async def retries_once_on_a_connection_the_server_closed_while_idle() -> None:
    async with RawServer() as server:
        client = HttpClient()
        server.answer = ok(b"{}")
        response = await client.request("GET", server.url + "/v1/models")
        assert await response.read() == b"{}"
        response.release()
        server.drop_all()  # the client finds out when it next sends on it, or just before
        response = await client.request("GET", server.url + "/v1/models")
        assert response.status == 200 and await response.read() == b"{}"
        response.release()
        assert server.connections == 2
        client.close()


async def reports_refusals_drops_and_deadlines() -> None:
    client = HttpClient()
    with pytest.raises(ConnectError):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/v1/models", connect_timeout_s=1)
    async with RawServer() as server:

        async def drop_mid_body(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"5\r\ndata:\r\n")
            await writer.drain()
            writer.transport.abort()

        server.answer = drop_mid_body
        response = await client.request("POST", server.url + "/x", b"{}")
        with pytest.raises(Disconnected):
            await response.readline()  # "data:" came, and its line never ended
        response.release()

        released = asyncio.Event()

        async def silent(writer: asyncio.StreamWriter) -> None:
            await released.wait()  # no answer until the test is done with this request

        server.answer = silent
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.request("POST", server.url + "/x", b"{}", deadline=loop.time() + 0.2)
        assert loop.time() - started < 1.0
        released.set()
    client.close()


async def drains_a_stream_whose_closing_chunk_trails() -> None:
    async with RawServer() as server:
        client = HttpClient()

        async def trailing(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")

        server.answer = trailing
        response = await client.request("POST", server.url + "/x", b"{}")
        assert await response.readline() == b"data: [DONE]\n"
        response.release(drain=True)  # read up to [DONE], the terminator not yet in
        deadline = asyncio.get_running_loop().time() + 5
        while not client.idle(server.url) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # until the terminator is in and the connection is back in the pool
        server.answer = ok(b"{}")
        response = await client.request("GET", server.url + "/y")
        assert await response.read() == b"{}"
        response.release()
        assert server.connections == 1  # the drained connection was given back and reused
        client.close()


CASES = [
    keeps_connections_alive_and_reads_both_framings,
    reads_a_body_that_ends_with_the_connection,
    retries_once_on_a_connection_the_server_closed_while_idle,
    reports_refusals_drops_and_deadlines,
    drains_a_stream_whose_closing_chunk_trails,
]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_the_client(case: Callable[[], Awaitable[None]], loop: str) -> None:
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None)
    with runner:
        runner.run(asyncio.wait_for(case(), 20))
