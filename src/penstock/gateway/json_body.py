"""Request bodies parsed by orjson: strict JSON, which the standard library's parser is not.

`json.loads` takes a lone UTF-16 surrogate escape ("\\ud800") and hands the app a str that cannot be
encoded: it passed validation in some fields and failed deep inside (the tokenizer: a 500). orjson
refuses it, and NaN and Infinity, as JSON does; its error is a `json.JSONDecodeError`, which FastAPI
turns into the 400 every malformed body gets. The routers that take a body use this route class.

Every body these routes take is JSON, so one sent without saying so is read as JSON too: `curl -d`
labels its body application/x-www-form-urlencoded, and FastAPI, seeing no JSON content type, handed the
models a string ("Input should be a valid dictionary", a 422 that never named the header).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Scope


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(_labelled_json(request.scope), request.receive))

        return strict


_UNLABELLED = (b"", b"application/x-www-form-urlencoded", b"text/plain")


def _labelled_json(scope: Scope) -> Scope:
    """The scope, with a JSON content type where the client sent none, a form's (curl -d) or plain text's."""
    headers = scope["headers"]
    given = next((value for name, value in headers if name == b"content-type"), b"")
    if given.split(b";", 1)[0].strip().lower() not in _UNLABELLED:
        return scope
    kept = [(name, value) for name, value in headers if name != b"content-type"]
    return {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
