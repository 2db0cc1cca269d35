"""POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse

from penstock.gateway.convert import completion_body, to_chat_request
from penstock.gateway.schemas import ChatCompletion, ChatCompletionRequest, ErrorResponse
from penstock.gateway.services import Services, services
from penstock.gateway.streaming import chat_stream
from penstock.observability.timing import StageTimer
from penstock.pipeline import Prepared, usage_of
from penstock.types import Caller, TokenEvent

router = APIRouter()
log = structlog.get_logger("penstock.request")

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 503, 504)}


def caller(authorization: str | None = Header(default=None), svc: Services = Depends(services)) -> Caller:
    return svc.auth.authenticate(authorization)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> ChatCompletion | StreamingResponse:
    timer = StageTimer()
    with timer.stage("gateway"):
        chat = to_chat_request(body, request.state.request_id, who, svc.policy)
    prepared = svc.pipeline.prepare(chat, timer)
    completion_id = f"chatcmpl-{chat.request_id}"
    if chat.stream:

        def on_done(status: str, events: list[TokenEvent]) -> None:
            _log_request(prepared, timer, status, usage_of(prepared.prompt, events).completion_tokens)

        stream = chat_stream(svc.pipeline, prepared, timer, completion_id, on_done)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    completion = await svc.pipeline.complete(prepared, timer)
    _log_request(prepared, timer, "ok", completion.usage.completion_tokens)
    return completion_body(completion, completion_id, chat.model)


def _log_request(prepared: Prepared, timer: StageTimer, status: str, completion_tokens: int) -> None:
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
