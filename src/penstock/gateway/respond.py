"""Run a prepared request through the pipeline and answer in the client's shape, whole or streamed."""

from __future__ import annotations

import structlog
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from penstock.gateway.shapes import Shape
from penstock.gateway.streaming import event_stream
from penstock.observability.timing import StageTimer
from penstock.pipeline import Pipeline, Prepared, usage_of
from penstock.types import TokenEvent

log = structlog.get_logger("penstock.request")


async def respond(
    pipeline: Pipeline, prepared: Prepared, timer: StageTimer, shape: Shape
) -> BaseModel | StreamingResponse:
    if prepared.request.stream:

        def on_done(status: str, events: list[TokenEvent]) -> None:
            log_request(prepared, timer, status, usage_of(prepared.prompt, events).completion_tokens)

        stream = event_stream(pipeline, prepared, timer, shape, on_done)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    completion = await pipeline.complete(prepared, timer)
    log_request(prepared, timer, "ok", completion.usage.completion_tokens)
    return shape.body(completion)


def log_request(prepared: Prepared, timer: StageTimer, status: str, completion_tokens: int) -> None:
    log.info(
        "request",
        request_id=prepared.request.request_id,
        tenant=prepared.request.caller.tenant,
        deployment=prepared.decision.deployment,
        route_reason=prepared.decision.reason,
        status=status,
        prompt_tokens=len(prepared.prompt.token_ids),
        completion_tokens=completion_tokens,
        total_ms=round(timer.total() * 1000, 3),
        stage_ms=timer.milliseconds(),
    )
