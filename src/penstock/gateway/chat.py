"""POST /v1/chat/completions and POST /v1/completions, streaming and not."""

from __future__ import annotations

import asyncio
from functools import partial

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from penstock.gateway.convert import DEADLINE_HEADER, chat_request, deadline_of, text_request
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.respond import respond
from penstock.gateway.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    TextCompletion,
)
from penstock.gateway.services import Services, services
from penstock.gateway.shapes import ChatShape, TextShape
from penstock.gateway.structured import carries_schemas
from penstock.observability.timing import StageTimer
from penstock.types import Caller

router = APIRouter(route_class=StrictJsonRoute)

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 503, 504)}


async def caller(authorization: str | None = Header(default=None), svc: Services = Depends(services)) -> Caller:
    return svc.auth.authenticate(authorization)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> BaseModel | StreamingResponse:
    timer = StageTimer()
    request_id = request.state.request_id
    with svc.settlement.refusals(request_id, who, "chat.completions", body.model):
        with timer.stage("gateway"):
            deadline = deadline_of(request.headers.get(DEADLINE_HEADER))
            convert = partial(chat_request, body, request_id, who, svc.policy, svc.retrieval_defaults, deadline)
            # Checking JSON schemas is CPU work (gateway/structured.py): a thread of its own, off the loop.
            chat = await asyncio.to_thread(convert) if carries_schemas(body) else convert()
        prepared = await svc.pipeline.prepare(chat, timer)
        shape = ChatShape(f"chatcmpl-{request_id}", chat.model, prepared.prompt, prepared.retrieval)
        return await respond(svc, prepared, "chat.completions", timer, shape, response, request.receive)


@router.post("/v1/completions", response_model=TextCompletion, responses=ERRORS)
async def completions(
    body: CompletionRequest,
    request: Request,
    response: Response,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> BaseModel | StreamingResponse:
    timer = StageTimer()
    request_id = request.state.request_id
    with svc.settlement.refusals(request_id, who, "completions", body.model):
        with timer.stage("gateway"):
            text = text_request(body, request_id, who, svc.policy, deadline_of(request.headers.get(DEADLINE_HEADER)))
        prepared = await svc.pipeline.prepare(text, timer)
        shape = TextShape(f"cmpl-{request_id}", text.model, echo=text.raw_prompt if body.echo else "")
        return await respond(svc, prepared, "completions", timer, shape, response, request.receive)
