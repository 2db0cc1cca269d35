"""HTTP/1.1 to upstream engines: asyncio's transports, httptools' parser (uvicorn's, in C), and a pool of
kept-alive connections per origin. Only what an OpenAI-compatible upstream needs: GET and POST with a
body, the answer read whole or line by line (SSE), http or https, Content-Length or chunked.

Why not a general client: the gateway spends its CPU per request, and the upstream call was the
largest part of it. One streamed call through a remote deployment to an instant upstream, CPU per call
on this project's 2-core machine: 363 µs on aiohttp, 167 µs on this (58 of them the HTTP exchange
itself); httpx had cost 1,760 µs. Waits take a deadline (the loop's clock) and time out by one timer
handle, not a timeout context per read.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

READ_AHEAD = 1 << 20  # bytes buffered ahead of the reader before the socket is paused


class ConnectError(Exception):
    """No connection could be made: refused, unreachable, a name that does not resolve, a TLS failure."""


class Disconnected(Exception):
    """The connection closed, or sent what is not HTTP, before the response was whole."""


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    tls: bool

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


class HttpClient:
    def __init__(self, keepalive_s: float = 30.0, max_idle_per_origin: int = 256) -> None:
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle_per_origin
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._split: dict[str, tuple[_Origin, str]] = {}  # url -> (origin, path): replicas' URLs repeat
        self._tls: ssl.SSLContext | None = None

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        connect_timeout_s: float = 10.0,
        deadline: float | None = None,
    ) -> Response:
        """The response, its status and headers read; its body is the Response's to read. `deadline` (the
        loop's clock) bounds the wait for the status line: TimeoutError past it."""
        origin, target = self._parts(url)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        message = head.encode("latin-1") + body
        while True:
            connection, reused = self._reused(origin), True
            if connection is None:
                connection, reused = await self._connected(origin, connect_timeout_s), False
            connection.send(message)
            try:
                await connection.wait_headers(deadline)
            except Disconnected:
                if reused and not connection.received:  # the server had closed it while idle: anew, once
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return Response(connection, self)

    def idle(self, url: str) -> int:
        """Connections to `url`'s origin kept open for the next request."""
        return len(self._idle.get(self._parts(url)[0], ()))

    def give_back(self, connection: _Connection) -> None:
        """A connection whose response was read whole: kept for the next request to its origin, if it may be."""
        idle = self._idle.setdefault(connection.origin, deque())
        if connection.closed or not connection.keep_alive or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _reused(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        stale = asyncio.get_running_loop().time() - self._keepalive_s
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest still open
            if not connection.closed and connection.idle_since > stale:
                return connection
            connection.close()
        return None

    async def _connected(self, origin: _Origin, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._context() if origin.tls else None
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin), origin.host, origin.port, ssl=tls
                )
        except TimeoutError:
            raise ConnectError(f"no connection to {origin.host}:{origin.port} within {timeout_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(exc.strerror or str(exc) or type(exc).__name__) from None
        return connection

    def _parts(self, url: str) -> tuple[_Origin, str]:
        known = self._split.get(url)
        if known is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConnectError(f"not an http(s) URL: {url}")
            tls = parts.scheme == "https"
            origin = _Origin(parts.hostname, parts.port or (443 if tls else 80), tls)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            known = self._split[url] = (origin, target)
        return known

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


class Response:
    def __init__(self, connection: _Connection, client: HttpClient) -> None:
        self.status = connection.status
        self.headers = connection.headers  # (lower-cased name, value), as they came
        self._connection = connection
        self._client = client
        self._released = False

    def header(self, name: str) -> str | None:
        """The first value of a header, if it came."""
        wanted = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for n, v in self.headers if n == wanted), None)

    async def readline(self, deadline: float | None = None) -> bytes:
        """The next line, its newline kept; b"" once the body is over. TimeoutError past `deadline`."""
        connection = self._connection
        while True:
            line = connection.take_line()
            if line is not None:
                return line
            await connection.wait_body(deadline)

    async def read(self, limit: int | None = None, deadline: float | None = None) -> bytes:
        """The body (its first `limit` bytes, if given)."""
        connection = self._connection
        while not connection.complete and (limit is None or len(connection.buffer) < limit):
            await connection.wait_body(deadline)
        return connection.take(limit)

    def release(self, *, drain: bool = False) -> None:
        """Done with it: the connection goes back to the pool if its response was read whole; with `drain`, once
        the rest of it is in (an SSE stream's closing chunk may trail its [DONE]); else it closes, which is also
        how an upstream hears that a stream was abandoned."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        if connection.complete:
            connection.buffer.clear()  # what is left unread of a whole response (an SSE stream's last blank line)
            self._client.give_back(connection)
        elif drain and not connection.closed:
            connection.drain(self._client.give_back)
        else:
            connection.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response under way on it."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: Callable[[_Connection], None] | None = None
        self._begin()

    def _begin(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.received = False
        self.buffer = bytearray()
        self._error: Exception | None = None
        self._framed = False  # a Content-Length or chunked body; else the body runs to the connection's close

    def drain(self, then: Callable[[_Connection], None]) -> None:
        """Read the rest of the response, unread, and hand the connection to `then` when it is whole."""
        self.buffer.clear()
        self._drained = then

    def send(self, message: bytes) -> None:
        self._begin()
        assert self._transport is not None
        self._transport.write(message)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def wait_headers(self, deadline: float | None) -> None:
        while not self.headers_done:
            await self._wait(deadline)

    async def wait_body(self, deadline: float | None) -> None:
        """Until more of the body is in, or the body is over."""
        if not self.complete:
            await self._wait(deadline)

    def take_line(self) -> bytes | None:
        """The buffer's first line; the rest of the body once it is over; None while a line is incomplete."""
        at = self.buffer.find(b"\n")
        if at < 0 and not self.complete:
            return None
        return self.take(at + 1 if at >= 0 else None)

    def take(self, limit: int | None) -> bytes:
        taken = bytes(self.buffer[:limit]) if limit is not None else bytes(self.buffer)
        del self.buffer[: len(taken)]
        if self._paused and len(self.buffer) < READ_AHEAD and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return taken

    async def _wait(self, deadline: float | None) -> None:
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            raise TimeoutError
        self._waiter = waiter = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self._error is not None and not self.buffer:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error = Disconnected(f"the upstream's answer is not HTTP/1.1 ({exc})")
            self.close()
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self._framed and exc is None:  # HTTP/1.0's way: the close ends the body
            self.complete, self.keep_alive = True, False
        if not self.complete and self._error is None:
            self._error = Disconnected("the upstream closed the connection before its answer was whole")
        self._wake()

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._drained is not None:
            return
        self.buffer += body
        if len(self.buffer) >= READ_AHEAD and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()
        drained, self._drained = self._drained, None
        if drained is not None:
            drained(self)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
