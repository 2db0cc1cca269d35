"""What the gateway reads of a request body: nothing for a caller it will refuse, nothing past the size
limit, nothing slower than the deadline.

FastAPI reads a body before it runs the dependency that checks the key, so a bad key is refused here
first, from the headers alone (the audit dripped a body with an invalid key for over 45 s). A body
over `max_bytes` is 413 before it is read into memory; one that has not all arrived within
`timeout_s` is 408, so a slow sender cannot hold a connection and its task for ever.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from penstock.errors import AuthenticationFailed, PayloadTooLarge, PenstockError, RequestTimeout
from penstock.gateway.error_handlers import error_response

_READS_A_BODY = frozenset({"POST", "PUT", "PATCH"})


class RequestBodyMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _READS_A_BODY:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = _refused_key(scope, headers.get(b"authorization"))
        declared = headers.get(b"content-length")
        if refusal is None and declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            refusal = self._too_large()
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A chunked body carries no length up front: count it as it arrives, and time it.

        Past a limit we answer ourselves, tell the app the client left, and drop what it sends.
        """
        seen, refused, body_done = 0, False, False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def guarded() -> Message:
            nonlocal seen, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:  # past the body, receive only waits for the client to leave
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                refused = True
                await error_response(RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s"))(
                    scope, receive, send
                )
                return {"type": "http.disconnect"}
            seen += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.max_bytes:
                refused = True
                await error_response(self._too_large())(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, guarded, unless_refused)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")


def _refused_key(scope: Scope, authorization: bytes | None) -> PenstockError | None:
    """The key's refusal, if the app's authenticator would refuse it (the app may not be started yet)."""
    services = getattr(scope["app"].state, "services", None) if "app" in scope else None
    if services is None or services.auth.open:
        return None
    try:
        services.auth.authenticate(authorization.decode("latin-1") if authorization is not None else None)
    except AuthenticationFailed as exc:
        return exc
    return None
