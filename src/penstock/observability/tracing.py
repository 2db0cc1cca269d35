"""OpenTelemetry traces: one per request, one span per stage, off unless an exporter is configured.

The request's root span is opened by the HTTP middleware (as a child of the client's `traceparent`,
when it sends one) and is the current span while the request runs. The stage spans are written
when the request is settled, from the stage timer's intervals, with their real start and end
times: the pipeline's code stays free of tracing calls, and a request costs one live span plus a
few finished ones. Without an exporter there is no provider at all and every call returns at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, Tracer
from opentelemetry.util.types import AttributeValue

from penstock.config import TracingConfig
from penstock.observability.timing import StageTimer


def tracer_provider(config: TracingConfig, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """The app's provider (never the process-global one): `exporter` for tests, else OTLP if configured."""
    if exporter is None:
        if not config.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class Tracing:
    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.tracer: Tracer | None = provider.get_tracer("penstock") if provider is not None else None

    def record_stages(self, timer: StageTimer, attributes: Mapping[str, AttributeValue]) -> None:
        """The timer's stages as children of the current request span, which gets `attributes`."""
        root = trace.get_current_span()
        if self.tracer is None or not root.is_recording():
            return
        root.set_attributes(attributes)
        parents: dict[str, Span] = {}
        context = trace.set_span_in_context(root)
        for interval in sorted(timer.intervals, key=lambda i: i.start):
            # A sub-stage ("retrieval.embed") nests under its stage's span when there is one.
            parent = parents.get(interval.name.partition(".")[0]) if "." in interval.name else None
            span = self.tracer.start_span(
                interval.name,
                context=trace.set_span_in_context(parent) if parent is not None else context,
                start_time=timer.wall_ns(interval.start),
            )
            span.end(end_time=timer.wall_ns(interval.end))
            parents.setdefault(interval.name, span)

    def trace_id(self) -> str | None:
        """The current request's trace id (hex), for its log lines; None when it is not traced."""
        if self.tracer is None:
            return None
        context = trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid and context.trace_flags.sampled else None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
