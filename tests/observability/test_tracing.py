"""Stage spans from a stage timer: real times, sub-stages under their stage, nothing when untraced."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from penstock.config import TracingConfig
from penstock.observability.timing import StageTimer
from penstock.observability.tracing import Tracing, tracer_provider
from penstock.types import Interval


def timer_with(*intervals: tuple[str, float, float]) -> StageTimer:
    timer = StageTimer()
    timer.intervals = [Interval(name, timer.started + a, timer.started + b) for name, a, b in intervals]
    return timer


def test_sub_stages_nest_under_their_stage_at_their_real_times() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(tracer_provider(TracingConfig(), exporter))
    assert tracing.tracer is not None
    timer = timer_with(
        ("gateway", 0.0, 0.001),
        ("retrieval", 0.001, 0.030),
        ("retrieval.embed", 0.001, 0.010),
        ("retrieval.dense", 0.010, 0.020),
        ("retrieval.sparse", 0.010, 0.025),
        ("prefill", 0.030, 0.100),
    )
    with tracing.tracer.start_as_current_span("request") as root:
        tracing.record_stages(timer, {"gen_ai.usage.output_tokens": 3})
        assert tracing.trace_id() == f"{root.get_span_context().trace_id:032x}"
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["request"].attributes == {"gen_ai.usage.output_tokens": 3}
    root_id, retrieval_id = spans["request"].context.span_id, spans["retrieval"].context.span_id
    for name in ("gateway", "retrieval", "prefill"):
        assert spans[name].parent is not None and spans[name].parent.span_id == root_id
    for name in ("retrieval.embed", "retrieval.dense", "retrieval.sparse"):
        assert spans[name].parent is not None and spans[name].parent.span_id == retrieval_id
    sparse = spans["retrieval.sparse"]
    assert sparse.start_time == timer.wall_ns(timer.started + 0.010)
    assert sparse.end_time is not None and sparse.start_time is not None
    assert abs((sparse.end_time - sparse.start_time) - 15_000_000) < 1_000  # 15 ms


def test_without_an_exporter_nothing_is_traced() -> None:
    tracing = Tracing(tracer_provider(TracingConfig()))
    assert tracing.tracer is None
    tracing.record_stages(timer_with(("gateway", 0.0, 0.001)), {})  # no current span, no provider: a no-op
    assert tracing.trace_id() is None
    assert not trace.get_current_span().is_recording()


def test_a_timer_merges_a_stage_that_continues_into_one_interval() -> None:
    timer = StageTimer()
    timer.add("prefill", 0.0)
    for _ in range(100):  # decode, token after token: one interval, not a hundred
        timer.add("decode", 0.0)
    timer.add("post", 0.0)
    assert [i.name for i in timer.intervals] == ["prefill", "decode", "post"]
    assert timer.intervals[1].start <= timer.intervals[1].end
