"""Server-sent events in OpenAI's chat.completion.chunk format, ending with `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import structlog

from penstock.errors import PenstockError
from penstock.gateway.convert import chunk, logprobs_out, usage_chunk
from penstock.gateway.schemas import ChunkChoice, Delta
from penstock.observability.timing import StageTimer
from penstock.pipeline import Pipeline, Prepared, usage_of
from penstock.types import TokenEvent

log = structlog.get_logger("penstock.gateway")


def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def chat_stream(
    pipeline: Pipeline,
    prepared: Prepared,
    timer: StageTimer,
    completion_id: str,
    on_done: Callable[[str, list[TokenEvent]], None],
) -> AsyncIterator[bytes]:
    model = prepared.request.model
    events: list[TokenEvent] = []
    status = "error"
    emit = lambda choice: sse(chunk(completion_id, model, choice).model_dump_json())  # noqa: E731
    try:
        for index in range(prepared.request.sampling.n):
            yield emit(ChunkChoice(index=index, delta=Delta(role="assistant", content="")))
        async for event in pipeline.generate(prepared, timer):
            events.append(event)
            if event.text or event.logprobs:
                delta = Delta(content=event.text)
                yield emit(ChunkChoice(index=event.index, delta=delta, logprobs=logprobs_out(event.logprobs)))
            if event.finish_reason:
                yield emit(ChunkChoice(index=event.index, delta=Delta(), finish_reason=event.finish_reason))
        if prepared.request.include_usage:
            usage = usage_of(prepared.prompt, events)
            yield sse(usage_chunk(completion_id, model, usage).model_dump_json())
        status = "ok"
    except Exception as exc:
        # Headers are gone already: the error travels as an event, and the stream still ends cleanly.
        if not isinstance(exc, PenstockError):
            log.exception("stream_failed", error_type=type(exc).__name__)
            exc = PenstockError("internal server error")
        yield sse(json.dumps(exc.to_openai()))
    finally:
        on_done(status, events)
    yield sse("[DONE]")
