"""Every HTTP exchange, whatever its fate: named by its x-request-id, and, with observability on, counted,
timed and traced.

The request id is always ours, and always echoed back: it keys the ledger row, the in-flight slot
and feedback, so a client choosing it could bill many requests as one, pass a cap on requests in
flight, or take another tenant's request id. A client's own id (`X-Client-Request-Id`, as OpenAI
takes it, or `X-Request-Id`) is kept as a label only: echoed as `x-client-request-id` and put on
the trace. This is the only place that sees requests refused before a handler runs (a bad key, a body that
is not JSON, an unknown path), so the error rates by status code come from here. When tracing is
on, the request's root span starts here, under the client's W3C `traceparent` if it sent one, and
stays current while the request runs, so the stage spans written at settlement become its children.
Both jobs share one middleware layer: a layer costs every request a frame and a wrapped `send`.
"""

from __future__ import annotations

import re
import uuid
from time import perf_counter

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from penstock.observability.engine_metrics import LATENCY_BUCKETS
from penstock.observability.lean_metrics import CounterSeries, HistogramSeries, LeanCounter, LeanHistogram
from penstock.observability.per_turn import PerTurn
from penstock.observability.tracing import Tracing

_PROPAGATOR = TraceContextTextMapPropagator()
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = LeanCounter(
            "penstock_http_responses_total",
            "HTTP responses by route and status code",
            ["method", "route", "code"],
            registry,
        )
        self.seconds = LeanHistogram(
            "penstock_http_request_seconds",
            "Arrival to the end of the response body",
            ["method", "route"],
            registry,
            LATENCY_BUCKETS,
        )
        self._exchanges: PerTurn[tuple[str, str, int, float]] = PerTurn(self._count)
        # Both series of each kind of exchange, looked up once per kind instead of twice per exchange.
        self._series: dict[tuple[str, str, int], tuple[CounterSeries, HistogramSeries]] = {}

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        """Called by the event loop only (lean_metrics has one writer); counted with the loop turn's others
        at the next turn (observability/per_turn.py), where their code and series are still in the caches."""
        self._exchanges.put((method, route, code, seconds))

    def observe_pending(self) -> None:
        """Count now the exchanges queued for the next loop turn."""
        self._exchanges.flush()

    def _count(self, exchanges: list[tuple[str, str, int, float]]) -> None:
        kinds = self._series
        for method, route, code, seconds in exchanges:
            series = kinds.get((method, route, code))
            if series is None:
                series = kinds[(method, route, code)] = (
                    self.responses.labels(method, route, str(code)),
                    self.seconds.labels(method, route),
                )
            series[0].inc()
            series[1].observe(seconds)


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None = None, tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracing.tracer if tracing is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, label = uuid.uuid4().hex, _client_label(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        echoed = [(b"x-request-id", request_id.encode())]
        if label is not None:
            echoed.append((b"x-client-request-id", label.encode()))
        started, code = perf_counter(), 500  # a response never started is a failure

        async def edge_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                message.setdefault("headers", []).extend(echoed)
            await send(message)

        if self.metrics is None and self.tracer is None:
            await self.app(scope, receive, edge_send)
            return
        span, token = self._open_span(scope, label)
        try:
            await self.app(scope, receive, edge_send)
        finally:
            route = _route(scope)
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, code, perf_counter() - started)
            if span is not None and token is not None:
                _close_span(span, scope, route, code)
                otel_context.detach(token)

    def _open_span(self, scope: Scope, label: str | None) -> tuple[trace.Span | None, object | None]:
        if self.tracer is None:
            return None, None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(f"{scope['method']} {scope['path']}", parent, SpanKind.SERVER)
        if label is not None:
            span.set_attribute("penstock.client_request_id", label)
        return span, otel_context.attach(trace.set_span_in_context(span))


def _client_label(scope: Scope) -> str | None:
    """The client's own name for its request, if it sent a sane one: a label, never a key."""
    headers = dict(scope["headers"])
    given = headers.get(b"x-client-request-id") or headers.get(b"x-request-id") or b""
    label = given.decode("latin-1")
    return label if _SANE.match(label) else None


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
