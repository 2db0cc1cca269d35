"""Every HTTP exchange, whatever its fate: counted and timed by route and status, and traced.

This is the only place that sees requests refused before a handler runs (a bad key, a body that
is not JSON, an unknown path), so the error rates by status code come from here. When tracing is
on, the request's root span starts here, under the client's W3C `traceparent` if it sent one, and
stays current while the request runs, so the stage spans written at settlement become its children.
"""

from __future__ import annotations

from time import perf_counter

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from penstock.observability.engine_metrics import LATENCY_BUCKETS
from penstock.observability.labelled import Labelled
from penstock.observability.tracing import Tracing

_PROPAGATOR = TraceContextTextMapPropagator()


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._child = Labelled()
        self.responses = Counter(
            "penstock_http_responses_total",
            "HTTP responses by route and status code",
            ["method", "route", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "penstock_http_request_seconds",
            "Arrival to the end of the response body",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self._child(self.responses, method, route, str(code)).inc()
        self._child(self.seconds, method, route).observe(seconds)


class ObserveHttpMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None, tracing: Tracing) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, code = perf_counter(), 500  # a response never started is a failure

        async def observed_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        span, token = self._open_span(scope)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = _route(scope)
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, code, perf_counter() - started)
            if span is not None and token is not None:
                _close_span(span, scope, route, code)
                otel_context.detach(token)

    def _open_span(self, scope: Scope) -> tuple[trace.Span | None, object | None]:
        if self.tracing.tracer is None:
            return None, None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracing.tracer.start_span(f"{scope['method']} {scope['path']}", parent, SpanKind.SERVER)
        return span, otel_context.attach(trace.set_span_in_context(span))


def _close_span(span: trace.Span, scope: Scope, route: str, code: int) -> None:
    span.update_name(f"{scope['method']} {route}")
    span.set_attributes(
        {"http.request.method": scope["method"], "http.route": route, "http.response.status_code": code}
    )
    if code >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _route(scope: Scope) -> str:
    """The matched route's template (bounded label values), not the raw path."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
