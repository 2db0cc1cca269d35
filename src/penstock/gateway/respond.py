"""A prepared request through the rest of the pipeline, answered in the client's shape, whole or streamed.

The pipeline admits it, then starts it; the answer begins once its first event is in (the router's
ladder may have tried several deployments for it), so its headers can say which deployment gives it
and why, and the limits' state. Whatever happens next, the pipeline settles it once. A client that
leaves before its answer stops the generation, and is billed what was generated.
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
from penstock.types import Completion, Generation, Prepared, RouteDecision, TokenEvent

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
    ticket = await svc.pipeline.admit(prepared, timer)
    served: list[Generation] = []  # the generation, once begun: who answers, and what it was sent

    def settle(status: str, events: list[TokenEvent]) -> None:
        svc.pipeline.settle(ticket, served[0] if served else prepared, route, timer, status, events)

    async def begin(broken: Generation | None = None) -> Generation:
        served[:] = [await svc.pipeline.start(prepared, timer, broken)]
        response.headers.update({**ticket.headers, ROUTE_HEADER: route_header(served[0].served.decision)})
        return served[0]

    async def whole() -> Completion:
        first = await begin()
        try:
            return await svc.pipeline.complete(first, timer, events)
        except PenstockError as exc:
            if not svc.pipeline.restartable(exc):
                raise
        events.clear()
        return await svc.pipeline.complete(await begin(first), timer, events)

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
