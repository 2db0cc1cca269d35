"""Request bodies parsed by orjson: strict JSON, which the standard library's parser is not.

`json.loads` takes a lone UTF-16 surrogate escape ("\\ud800") and hands the app a str that cannot be
encoded: it passed validation in some fields and failed deep inside (the tokenizer: a 500). orjson
refuses it, and NaN and Infinity, as JSON does; its error is a `json.JSONDecodeError`, which FastAPI
turns into the 400 every malformed body gets. The routers that take a body use this route class.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict
