"""Penstock's exceptions, and the one mapping from them to OpenAI's error shape.

PenstockError                      500 server_error
├── ConfigError                    (start-up only: exit code 2, never an HTTP response)
├── ModelNotInstalled              (start-up only: names the package and its install command)
├── InvalidRequest                 400 invalid_request_error
│   └── ContextLengthExceeded      400 invalid_request_error / context_length_exceeded
├── RequestTimeout                 408 invalid_request_error / request_timeout (a body too slow to arrive)
├── PayloadTooLarge                413 invalid_request_error
├── AuthenticationFailed           401 authentication_error
├── PermissionDenied               403 permission_error
├── NotFound                       404 invalid_request_error
│   └── ModelNotFound              404 invalid_request_error / model_not_found
├── Conflict                       409 invalid_request_error / conflict
├── ClientDisconnected             499 client_disconnected (never sent: the client is gone; the ledger's status)
├── RateLimited                    429 rate_limit_error (+ Retry-After, x-ratelimit-*)
│   ├── QuotaExceeded              429 insufficient_quota / insufficient_quota
│   └── Overloaded                 429 rate_limit_error / overloaded (a deployment's queue cannot take it in time)
├── UpstreamFailed                 502 server_error / upstream_error (an engine behind the router failed)
├── DependencyUnavailable          503 service_unavailable
│   └── NoDeploymentAvailable      503 service_unavailable / no_deployment_available (+ Retry-After)
└── DeadlineExceeded               504 timeout
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from penstock.observability.redaction import redact

# A message may quote what the client sent (a grammar, a schema, a name): in an answer or a request's
# log line it is cut to this many characters, so an error never echoes megabytes to either.
MAX_MESSAGE_CHARS = 1000


class PenstockError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def headers(self) -> dict[str, str]:
        return {}

    def to_openai(self) -> dict[str, Any]:
        """The client's view; messages can quote what the client sent, so they are redacted like logs."""
        # A parameter path may hold a client's key name.
        param = self.param and clip(self.param, 200)
        return {"error": {"message": redact(clip(self.message)), "type": self.type, "param": param, "code": self.code}}


class ConfigError(PenstockError):
    """The configuration is invalid; raised at start-up, before anything is served."""


class ModelNotInstalled(PenstockError):
    """A model file is missing; the message names the package and the command that installs it."""


class InvalidRequest(PenstockError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class RequestTimeout(PenstockError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # what is left of a body too slow to arrive is not read


class PayloadTooLarge(PenstockError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class AuthenticationFailed(PenstockError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(PenstockError):
    status = 403
    type = "permission_error"


class NotFound(PenstockError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class Conflict(PenstockError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class ClientDisconnected(PenstockError):
    """The client went away before its answer was ready; the work for it was stopped."""

    status = 499  # nginx's "client closed request"
    type = "client_disconnected"
    default_code = "client_disconnected"


class RateLimited(PenstockError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after_s: float, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self._headers = headers or {}

    def headers(self) -> dict[str, str]:
        return {**self._headers, "Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class QuotaExceeded(RateLimited):
    """A tenant's daily or monthly budget is spent: waiting a second will not help, so no short retry."""

    type = "insufficient_quota"
    default_code = "insufficient_quota"


class Overloaded(RateLimited):
    """A deployment's queue is full, or the request would not start within its wait limit or deadline: refused
    as it arrives, Retry-After the estimated time until it could start."""

    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float, reason: str) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.reason = reason  # full, wait, shed or timeout: the metric's label


class DependencyUnavailable(PenstockError):
    status = 503
    type = "service_unavailable"


class NoDeploymentAvailable(DependencyUnavailable):
    """Every rung of the request's ladder was down, saturated or failed before its first token."""

    default_code = "no_deployment_available"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class UpstreamFailed(PenstockError):
    """A remote engine failed a call: `retryable` ones (it could not connect, answered 5xx or 429, timed out,
    broke its stream before the first token) move the ladder on; the others are the same wherever sent."""

    status = 502
    default_code = "upstream_error"

    def __init__(self, message: str, *, kind: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.kind = kind  # connect, timeout, status_503, protocol, ...: the route reason and the breaker's evidence
        self.retryable = retryable


class DeadlineExceeded(PenstockError):
    status = 504
    type = "timeout"


class ShuttingDown(PenstockError):
    """The server's shutdown grace period ran out before this stream finished."""

    status = 503
    type = "service_unavailable"
    default_code = "shutting_down"


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text`, cut to about `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
