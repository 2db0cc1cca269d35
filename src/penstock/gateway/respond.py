"""Admit a prepared request, run it through the pipeline, answer in the client's shape, whole or streamed.

Admission (rate limits, with prompt + max_tokens reserved) comes after the prompt is built, since
the token count is known only then, and before any generation. Whatever happens next, the request
is settled once: recorded (ledger, metrics, trace, log), and its unused tokens and in-flight slot given back.
A client that leaves before its answer stops the generation, and is billed what was generated.
"""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive

from penstock.errors import PenstockError
from penstock.gateway.disconnect import unless_disconnected
from penstock.gateway.services import Services
from penstock.gateway.shapes import Shape
from penstock.gateway.streaming import event_stream
from penstock.observability.timing import StageTimer
from penstock.pipeline import Prepared, usage_of
from penstock.types import TokenEvent


async def respond(
    svc: Services,
    prepared: Prepared,
    route: str,
    timer: StageTimer,
    shape: Shape,
    response: Response,
    receive: Receive,
) -> BaseModel | StreamingResponse:
    """`receive`: the connection's, to notice a client that leaves before a whole answer is ready."""
    with timer.stage("admission"):
        svc.usage.check_budget(prepared.request.caller)
        ticket = await svc.limiter.admit(
            prepared.request.caller, prepared.request.request_id, reserved_tokens(prepared)
        )

    def settle(status: str, completion_tokens: int, text: str = "") -> None:
        svc.limiter.finish(ticket, len(prepared.prompt.token_ids) + completion_tokens)
        svc.usage.answered(prepared, route, timer, status, completion_tokens, text)

    if prepared.request.stream:

        def on_done(status: str, events: list[TokenEvent]) -> None:
            text = "".join(e.text for e in events if e.index == 0)
            settle(status, usage_of(prepared.prompt, events).completion_tokens, text)

        stream = event_stream(svc.pipeline, prepared, timer, shape, on_done, svc.draining)
        headers = {**ticket.headers, "Cache-Control": "no-cache"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    response.headers.update(ticket.headers)
    events: list[TokenEvent] = []
    try:
        completion = await unless_disconnected(receive, svc.pipeline.complete(prepared, timer, events))
    except PenstockError as exc:  # the engine's queue full, the client gone: what was generated is billed
        settle(exc.code or exc.type, usage_of(prepared.prompt, events).completion_tokens)
        raise
    except BaseException:
        settle("error", usage_of(prepared.prompt, events).completion_tokens)
        raise
    settle("ok", completion.usage.completion_tokens, completion.choices[0].text if completion.choices else "")
    return shape.body(completion)


def reserved_tokens(prepared: Prepared) -> int:
    """What tokens-per-minute limits reserve at admission: the prompt and every choice at full length."""
    sampling = prepared.request.sampling
    return len(prepared.prompt.token_ids) + (sampling.max_tokens or 0) * sampling.n
