"""Admit a prepared request, run it through the pipeline, answer in the client's shape, whole or streamed.

Admission (rate limits, with prompt + max_tokens reserved) comes after the prompt is built, since
the token count is known only then, and before any generation. Whatever happens next, the request
is settled once: logged, and its unused tokens and in-flight slot given back.
"""

from __future__ import annotations

import structlog
from fastapi import Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from penstock.gateway.services import Services
from penstock.gateway.shapes import Shape
from penstock.gateway.streaming import event_stream
from penstock.observability.timing import StageTimer
from penstock.pipeline import Prepared, usage_of
from penstock.types import TokenEvent

log = structlog.get_logger("penstock.request")


async def respond(
    svc: Services, prepared: Prepared, route: str, timer: StageTimer, shape: Shape, response: Response
) -> BaseModel | StreamingResponse:
    with timer.stage("admission"):
        svc.usage.check_budget(prepared.request.caller)
        ticket = await svc.limiter.admit(
            prepared.request.caller, prepared.request.request_id, reserved_tokens(prepared)
        )

    def settle(status: str, completion_tokens: int) -> None:
        log_request(prepared, timer, status, completion_tokens)
        svc.limiter.finish(ticket, len(prepared.prompt.token_ids) + completion_tokens)
        svc.usage.answered(prepared, route, timer, status, completion_tokens)

    if prepared.request.stream:

        def on_done(status: str, events: list[TokenEvent]) -> None:
            settle(status, usage_of(prepared.prompt, events).completion_tokens)

        stream = event_stream(svc.pipeline, prepared, timer, shape, on_done, svc.draining)
        headers = {**ticket.headers, "Cache-Control": "no-cache"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    response.headers.update(ticket.headers)
    try:
        completion = await svc.pipeline.complete(prepared, timer)
    except BaseException:
        settle("error", 0)
        raise
    settle("ok", completion.usage.completion_tokens)
    return shape.body(completion)


def reserved_tokens(prepared: Prepared) -> int:
    """What tokens-per-minute limits reserve at admission: the prompt and every choice at full length."""
    sampling = prepared.request.sampling
    return len(prepared.prompt.token_ids) + (sampling.max_tokens or 0) * sampling.n


def log_request(prepared: Prepared, timer: StageTimer, status: str, completion_tokens: int) -> None:
    retrieval = prepared.retrieval
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
        retrieval_status=retrieval.status if retrieval else None,
        retrieval_degraded=list(retrieval.degraded) if retrieval else None,
        injection_flags=prepared.prompt.flagged_lines,
    )
