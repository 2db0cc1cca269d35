"""One request, start to end, in the order it runs:

    prepare  refuse if overloaded → retrieve → build context → route   (everything that can reject it)
    admit    budgets, rate limits (tokens reserved)
    start    the ladder: the first deployment that can begin gives the answer's first event
    complete the rest of the events → post-processing → the whole completion (or the gateway streams them)
    settle   tokens not used given back; ledger row, budgets, metrics, trace, log line

Each stage takes the typed value the previous one returned; the timer wraps them from outside. The
gateway calls them and speaks HTTP around them. The prompt is built with the tokenizer of the route's
first deployment (a lookup that also refuses an unknown model), so the route's rules can read its length;
a deployment with another tokenizer gets it built again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from time import perf_counter
from typing import Protocol

from penstock.config import DeploymentConfig
from penstock.context.builder import ContextBuilder
from penstock.errors import DeadlineExceeded, DependencyUnavailable, InvalidRequest, Overloaded, UpstreamFailed
from penstock.observability.settlement import Settlement
from penstock.observability.timing import StageTimer
from penstock.postprocess.choices import collect_choices
from penstock.postprocess.tool_calls import ToolCallExtractor
from penstock.router.admission import Admission
from penstock.router.deployment_queue import every_refused
from penstock.router.deployments import Deployment
from penstock.router.ladder import Fit, Ladder
from penstock.router.limiter import Ticket
from penstock.router.router import Router
from penstock.types import (
    ChatRequest,
    Completion,
    Generation,
    Grammar,
    Prepared,
    Principal,
    Prompt,
    Retrieval,
    TokenEvent,
    Usage,
)

# A grammar compiles in milliseconds; one that takes longer than this is the client's to simplify.
GRAMMAR_TIMEOUT_S = 5.0


class Retrieve(Protocol):
    async def retrieve(
        self, query: str, principal: Principal, collections: Sequence[str], top_k: int, *, rerank: bool = True
    ) -> Retrieval: ...


class Pipeline:
    def __init__(
        self,
        router: Router,
        builder: ContextBuilder,
        ladder: Ladder,
        admission: Admission,
        settlement: Settlement,
        configs: Mapping[str, DeploymentConfig],
        retriever: Retrieve | None = None,
    ) -> None:
        """`configs`: the deployments' configuration as the control plane has it now (default deadlines)."""
        self._router = router
        self._builder = builder
        self._deployments = ladder.deployments
        self.ladder = ladder
        self._admission = admission
        self._settlement = settlement
        self._configs = configs
        self._retriever = retriever

    async def prepare(self, request: ChatRequest, timer: StageTimer) -> Prepared:
        """Everything that can reject the request runs here, before a byte of the answer is sent."""
        counting = self._deployments[self._router.counting_deployment(request)]  # a lookup: raises 404
        self._refuse_if_overloaded(request)
        async with within(request.deadline, "retrieving passages"):
            retrieval = await self._retrieve(request, timer)
        with timer.stage("context"):
            prompt, fitted = self._builder.build(request, counting.codec, retrieval)
            await _checked_grammar(counting, fitted)  # only once the prompt is known to fit
        with timer.stage("route"):
            decision = self._router.route(request, len(prompt.token_ids))
            deployment = self._deployments[decision.deployment]
            if deployment is not counting:  # another tokenizer, window or grammar support: fitted again
                prompt, fitted = self._builder.build(request, deployment.codec, retrieval)
                await _checked_grammar(deployment, fitted)
        config = self._configs.get(decision.deployment)
        if fitted.deadline is None and config is not None and config.deadline_s is not None:
            fitted = replace(fitted, deadline=time.monotonic() - timer.total() + config.deadline_s)  # from arrival
        return Prepared(fitted, decision, prompt, retrieval, request)

    def _refuse_if_overloaded(self, request: ChatRequest) -> None:
        """Refused before any work is done for it (retrieval, the prompt) when every deployment it could go to
        would refuse it now: under overload most requests are refusals, and each should cost next to nothing.
        The ladder asks each queue again once the request is prepared."""
        refusals: dict[str, Overloaded] = {}
        for name in self._router.candidates(request):
            deployment = self._deployments.get(name)
            if deployment is None:  # (a route changing under the request: the ladder will say)
                return
            try:
                deployment.queue.check(request)
            except Overloaded as refusal:
                refusals[name] = refusal
            else:
                return
        if len(refusals) == 1:
            raise next(iter(refusals.values()))
        if refusals:
            raise every_refused(request.model, list(refusals.values()), ", ".join(f"{n}:overloaded" for n in refusals))

    async def _retrieve(self, request: ChatRequest, timer: StageTimer) -> Retrieval | None:
        options = request.retrieval
        if options is None:
            return None
        if self._retriever is None:
            raise DependencyUnavailable("retrieval needs the database, which this server runs without")
        query = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        with timer.stage("retrieval"):
            found = await self._retriever.retrieve(
                query, options.principal, options.collections, options.top_k, rerank=options.rerank
            )
        timer.absorb("retrieval.", found.stage_intervals, found.stage_seconds)
        return found

    async def admit(self, prepared: Prepared, timer: StageTimer) -> Ticket:
        """Past its budgets and rate limits, with the prompt and every choice at full length reserved."""
        with timer.stage("admission"):
            request = prepared.request
            return await self._admission.admit(request.caller, request.request_id, reserved_tokens(prepared))

    async def start(self, prepared: Prepared, timer: StageTimer, broken: Generation | None = None) -> Generation:
        """The answer's first event in hand (the ladder tried what it had to); raises if none could begin.
        `broken`: a whole answer's first try, which failed part way (see `restartable`): begun once more."""
        if prepared.prompt.answer is not None:  # decided without the model: every choice says it
            timer.mark_first_token()
            return Generation(prepared, _fixed(prepared.prompt.answer, prepared.request.sampling.n))
        begun, decision = perf_counter(), prepared.decision
        if broken is not None:  # the reason says so: "requested,restart:workers", then what the ladder adds
            decision = replace(decision, reason=f"{decision.reason},restart:{broken.served.decision.deployment}")
        fit = self._fitter(prepared)
        again = broken.target if broken is not None else None
        deadline = prepared.request.deadline
        async with within(deadline, "waiting for the first token"):
            started = await self.ladder.start(decision, prepared.prompt, prepared.request, fit, broken=again)
        served = replace(prepared, decision=started.decision, prompt=started.prompt, request=started.request)
        tools = ToolCallExtractor(started.request) if started.request.calls_tools and not started.native_tools else None
        events = started.events if deadline is None else _before(deadline, started.events)
        return Generation(served, _timed(events, timer, begun, tools), started.target)

    def _fitter(self, prepared: Prepared) -> Fit:
        def fit(name: str) -> tuple[Prompt, ChatRequest] | None:
            try:
                return self._builder.build(
                    prepared.asked or prepared.request, self._deployments[name].codec, prepared.retrieval
                )
            except InvalidRequest:  # the prompt does not fit this rung's window
                return None

        return fit

    def restartable(self, failure: Exception) -> bool:
        """Whether a whole (not streamed) answer that broke part way may begin again: the client has seen none
        of it. Once, where the ladder allows; the broken part is not billed (its tokens were not delivered)."""
        return isinstance(failure, UpstreamFailed) and self.ladder.may_restart(failure)

    async def complete(self, generation: Generation, timer: StageTimer, events: list[TokenEvent]) -> Completion:
        """The whole answer; `events` gathers its events as they come, for a caller that may cancel."""
        async with aclosing(generation.events) as stream:
            async for event in stream:
                events.append(event)
        with timer.stage("post"):
            choices = collect_choices(events)
        return Completion(choices, usage_of(generation.served.prompt, events), dict(timer.seconds))

    def settle(
        self,
        ticket: Ticket,
        answered: Prepared | Generation,
        route: str,
        timer: StageTimer,
        status: str,
        events: list[TokenEvent],
    ) -> None:
        """Once per admitted request, however it ended: `answered` is the generation when one began (who
        answered, what it was sent), else the request as prepared; `events` what reached the client."""
        served = answered.served if isinstance(answered, Generation) else answered
        usage = usage_of(served.prompt, events)
        self._admission.release(ticket, usage.total_tokens)
        text = "".join(e.text for e in events if e.index == 0)
        target = answered.target if isinstance(answered, Generation) else ""
        self._settlement.answered(served, route, timer, status, usage, text, target)


async def _timed(
    events: AsyncIterator[TokenEvent], timer: StageTimer, begun: float, tools: ToolCallExtractor | None
) -> AsyncIterator[TokenEvent]:
    """The events with prefill (to the first) and decode (the rest) timed, tool calls read out of the text."""
    last = begun
    async with aclosing(events) as stream:
        async for event in stream:
            now = perf_counter()
            if last == begun:  # the first event closes prefill (and the first token)
                timer.mark_first_token()
            timer.add("decode" if last > begun else "prefill", now - last)
            if tools is not None:
                with timer.stage("post"):
                    event = tools.process(event)
            last = perf_counter()
            yield event


@asynccontextmanager
async def within(deadline: float | None, doing: str) -> AsyncIterator[None]:
    """The block cut short at `deadline` (time.monotonic()) as a DeadlineExceeded; no limit without one."""
    if deadline is None:
        yield
        return
    loop = asyncio.get_running_loop()
    timeout = asyncio.timeout_at(loop.time() + deadline - time.monotonic())
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():  # another's timeout, raised through this block
            raise
        raise DeadlineExceeded(f"the request's deadline passed while {doing}", code="deadline_exceeded") from None


async def _before(deadline: float, events: AsyncIterator[TokenEvent]) -> AsyncIterator[TokenEvent]:
    """The events until `deadline`; past it the generation is closed (the engine frees its blocks, an upstream
    call is cut) and DeadlineExceeded raised, which a stream ends with as its error event."""
    async with aclosing(events) as stream:
        while True:
            async with within(deadline, "generating"):
                event = await anext(stream, None)
            if event is None:
                return
            yield event


async def _fixed(answer: str, n: int) -> AsyncIterator[TokenEvent]:
    for index in range(n):
        yield TokenEvent(answer, (), "stop", index=index)


async def _checked_grammar(deployment: Deployment, request: ChatRequest) -> None:
    """The request's output grammar compiled for the deployment, unless it takes tools natively."""
    grammar = request.sampling.grammar
    if grammar is not None and not (deployment.native_tools and request.calls_tools):
        await _compiled(deployment, grammar)


async def _compiled(model: Deployment, grammar: Grammar) -> None:
    """The grammar compiled on a thread (a large schema compiles for a while), within GRAMMAR_TIMEOUT_S."""
    try:
        await asyncio.wait_for(asyncio.to_thread(model.check_grammar, grammar), GRAMMAR_TIMEOUT_S)
    except TimeoutError:
        raise InvalidRequest(
            f"the output grammar took longer than {GRAMMAR_TIMEOUT_S:g} s to compile; simplify the schema",
            param="response_format",
            code="grammar_too_complex",
        ) from None


def usage_of(prompt: Prompt, events: list[TokenEvent]) -> Usage:
    """A remote engine's own count where it gave one (on its last event), else the tokens seen here."""
    reported = next((e.usage for e in reversed(events) if e.usage is not None), None)
    return reported or Usage(len(prompt.token_ids), sum(len(e.token_ids) for e in events))


def reserved_tokens(prepared: Prepared) -> int:
    """What tokens-per-minute limits reserve at admission: the prompt and every choice at full length."""
    sampling = prepared.request.sampling
    return len(prepared.prompt.token_ids) + (sampling.max_tokens or 0) * sampling.n
