"""An open server (no master key) answers only requests addressed to a loopback name.

Without a key, the server trusts whoever can reach it, and `penstock serve` listens on loopback only.
A web page the user visits can still reach loopback through DNS rebinding: its own name, re-pointed
at 127.0.0.1, arrives in the Host header. Refusing every Host that is not a loopback name closes that.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from penstock.errors import InvalidRequest
from penstock.gateway.error_handlers import error_response


class LoopbackHostMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_loopback_host(dict(scope["headers"]).get(b"host", b"")):
            refusal = InvalidRequest(
                "this server has no master key and answers only requests to a loopback host", code="invalid_host"
            )
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_loopback_host(header: bytes) -> bool:
    """`localhost`, `*.localhost` or a loopback address, with or without a port."""
    host = header.decode("latin-1").lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
