"""Admit a prepared request, run it through the pipeline, answer in the client's shape, whole or streamed.

Admission (rate limits, with prompt + max_tokens reserved) comes after the prompt is built, since
the token count is known only then, and before any generation. The answer begins once its first event
is in (the router's ladder may have tried several deployments for it), so its headers can say which
deployment gives it and why. Whatever happens next, the request is settled once: recorded (ledger,
metrics, trace, log), and its unused tokens and in-flight slot given back. A client that leaves before
its answer stops the generation, and is billed what was generated.
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
from penstock.pipeline import Generation, Prepared, usage_of
from penstock.types import Completion, RouteDecision, TokenEvent

ROUTE_HEADER = "x-penstock-route"


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
    served: list[Generation] = []  # the generation, once begun: who answers, and what it was sent

    def settle(status: str, events: list[TokenEvent]) -> None:
        answered = served[0].served if served else prepared
        usage = usage_of(answered.prompt, events)
        svc.limiter.finish(ticket, usage.total_tokens)
        text = "".join(e.text for e in events if e.index == 0)
        svc.usage.answered(answered, route, timer, status, usage, text, served[0].target if served else "")

    async def begin() -> Generation:
        served.append(await svc.pipeline.start(prepared, timer))
        response.headers.update({**ticket.headers, ROUTE_HEADER: route_header(served[0].served.decision)})
        return served[0]

    async def whole() -> Completion:
        return await svc.pipeline.complete(await begin(), timer, events)

    events: list[TokenEvent] = []
    try:
        if prepared.request.stream:  # the headers wait for the first token: they name who gives it
            generation = await unless_disconnected(receive, begin())
        else:  # one watch over the connection for both halves (a task each would cost the busiest path)
            completion = await unless_disconnected(receive, whole())
    except PenstockError as exc:  # no rung could begin, the stream broke, the client left: what came is billed
        settle(exc.code or exc.type, events)
        raise
    except BaseException:
        settle("error", events)
        raise
    if prepared.request.stream:
        stream = event_stream(generation, timer, shape, settle, svc.draining)
        route_at = route_header(generation.served.decision)
        headers = {**ticket.headers, ROUTE_HEADER: route_at, "Cache-Control": "no-cache"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    settle("ok", events)
    return shape.body(completion)


def route_header(decision: RouteDecision) -> str:
    """Which deployment answered and why, e.g. `small; reason=rule:long-prompts,fallback:big:status_503`."""
    return f"{decision.deployment}; reason={decision.reason}"


def reserved_tokens(prepared: Prepared) -> int:
    """What tokens-per-minute limits reserve at admission: the prompt and every choice at full length."""
    sampling = prepared.request.sampling
    return len(prepared.prompt.token_ids) + (sampling.max_tokens or 0) * sampling.n
