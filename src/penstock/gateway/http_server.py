"""uvicorn as Penstock runs it: its HTTP protocol with a deadline for a request's headers, and a bound on
connections.

uvicorn times out only an idle keep-alive connection, and any byte resets that: headers sent one byte
every ten seconds held a connection open for as long as the client liked (slowloris). Here a request's
headers must all arrive within `header_timeout_s` of the connection, or of the request's first byte,
or the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from penstock.config import Settings


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0  # set by deadline_protocol()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def deadline_protocol(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's `http` setting, with this header deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})


def server_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn as Penstock runs it: a deadline on headers, a bound on connections, no access log of its own."""
    policy = settings.policy
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=policy.shutdown_grace_s,
        http=deadline_protocol(policy.header_timeout_s),
        limit_concurrency=policy.max_connections,
    )
