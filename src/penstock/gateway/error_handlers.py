"""Every failure leaves the gateway in OpenAI's error shape with the status its type maps to."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from penstock.errors import InvalidRequest, NotFound, PenstockError

log = structlog.get_logger("penstock.gateway")


def error_response(exc: PenstockError) -> JSONResponse:
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=exc.headers())


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """The first problem pydantic found, named by its parameter path as OpenAI does."""
    first: dict[str, Any] = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return InvalidRequest("request body is not valid JSON", code="invalid_json")
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return InvalidRequest(message, param=param, code=first.get("type"))


def install_error_handlers(app: FastAPI) -> None:
    async def on_penstock_error(_: Request, exc: PenstockError) -> JSONResponse:
        return error_response(exc)

    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = NotFound(str(exc.detail)) if exc.status_code == 404 else InvalidRequest(str(exc.detail))
        body = err.to_openai()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The client learns only that we failed; the details go to the log, never to the response.
        log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
        return error_response(PenstockError("internal server error"))

    app.add_exception_handler(PenstockError, on_penstock_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
