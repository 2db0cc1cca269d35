"""Server-sent events in OpenAI's streaming format, ending with `data: [DONE]`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import structlog

from penstock.errors import PenstockError
from penstock.gateway.draining import Draining
from penstock.gateway.shapes import Shape
from penstock.observability.timing import StageTimer
from penstock.pipeline import usage_of
from penstock.types import Generation, TokenEvent

log = structlog.get_logger("penstock.gateway")


def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def event_stream(
    generation: Generation,
    timer: StageTimer,
    shape: Shape,
    on_done: Callable[[str, list[TokenEvent]], None],
    draining: Draining,
) -> AsyncIterator[bytes]:
    """The answer's events as SSE; after its first token a failure (an upstream's broken stream, the
    shutdown grace run out) is an error event and `[DONE]`, never a hang or a silent end."""
    events: list[TokenEvent] = []
    status = "error"
    served = generation.served
    try:
        for chunk in shape.opening(served.request.sampling.n):
            yield sse(chunk.model_dump_json())
        # aclosing: a stream cut short (shutdown, an error, the client gone) aborts its generation at once.
        async with aclosing(generation.events) as stream:
            async for event in stream:
                events.append(event)
                for chunk in shape.chunks(event):
                    yield sse(chunk.model_dump_json())
                draining.check()
        if served.request.include_usage:
            yield sse(shape.usage_chunk(usage_of(served.prompt, events)).model_dump_json())
        status = "ok"
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: the stream is closed under us
        status = "client_disconnected"
        raise
    except Exception as exc:
        # Headers are gone already: the error travels as an event, and the stream still ends cleanly.
        if not isinstance(exc, PenstockError):
            log.exception("stream_failed", error_type=type(exc).__name__)
            exc = PenstockError("internal server error")
        status = exc.code or exc.type
        yield sse(json.dumps(exc.to_openai()))
    finally:
        on_done(status, events)
    yield sse("[DONE]")
