"""One request, start to end: route → build context → generate → post-process.

Each stage takes the typed value the previous one returned; the timer wraps them from outside.
Retrieval joins between routing and context building when collections are configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from penstock.context.builder import ChatFormat, ContextBuilder
from penstock.errors import DependencyUnavailable, InvalidRequest
from penstock.observability.timing import StageTimer
from penstock.postprocess.choices import collect_choices
from penstock.postprocess.tool_calls import ToolCallExtractor
from penstock.router.router import Router
from penstock.types import (
    ChatRequest,
    Completion,
    Grammar,
    Principal,
    Prompt,
    RequestPriority,
    Retrieval,
    RouteDecision,
    SamplingParams,
    TokenEvent,
    Usage,
)

# A grammar compiles in milliseconds; one that takes longer than this is the client's to simplify.
GRAMMAR_TIMEOUT_S = 5.0


class Model(ChatFormat, Protocol):
    """What the pipeline needs from a deployment."""

    def check_grammar(self, grammar: Grammar) -> None:
        """Raise InvalidRequest if the model cannot decode under this grammar (compiling it, cached)."""
        ...

    def generate(
        self, prompt: Prompt, params: SamplingParams, priority: RequestPriority
    ) -> AsyncIterator[TokenEvent]: ...


class Retrieve(Protocol):
    async def retrieve(
        self, query: str, principal: Principal, collections: Sequence[str], top_k: int, *, rerank: bool = True
    ) -> Retrieval: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    request: ChatRequest
    decision: RouteDecision
    prompt: Prompt
    retrieval: Retrieval | None = None


class Pipeline:
    def __init__(
        self, router: Router, builder: ContextBuilder, models: Mapping[str, Model], retriever: Retrieve | None = None
    ) -> None:
        self._router = router
        self._builder = builder
        self._models = models
        self._retriever = retriever

    async def prepare(self, request: ChatRequest, timer: StageTimer) -> Prepared:
        """Everything that can reject the request runs here, before a byte of the answer is sent."""
        with timer.stage("route"):
            decision = self._router.route(request)
        retrieval = await self._retrieve(request, timer)
        model = self._models[decision.deployment]
        with timer.stage("context"):
            prompt, request = self._builder.build(request, model, retrieval)
            if request.sampling.grammar is not None:  # only once the prompt is known to fit
                await _compiled(model, request.sampling.grammar)
        return Prepared(request, decision, prompt, retrieval)

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

    async def generate(self, prepared: Prepared, timer: StageTimer) -> AsyncIterator[TokenEvent]:
        if prepared.prompt.answer is not None:  # decided without the model: every choice says it
            timer.mark_first_token()
            for index in range(prepared.request.sampling.n):
                yield TokenEvent(prepared.prompt.answer, (), "stop", index=index)
            return
        model = self._models[prepared.decision.deployment]
        request = prepared.request
        tool_calls = ToolCallExtractor(request) if request.calls_tools else None
        start = last = perf_counter()
        async for event in model.generate(prepared.prompt, request.sampling, request.priority):
            now = perf_counter()
            # The first event closes prefill (and the first token); everything after it is decode.
            if last == start:
                timer.mark_first_token()
            timer.add("decode" if last > start else "prefill", now - last)
            if tool_calls is not None:
                with timer.stage("post"):
                    event = tool_calls.process(event)
            last = perf_counter()
            yield event

    async def complete(
        self, prepared: Prepared, timer: StageTimer, events: list[TokenEvent] | None = None
    ) -> Completion:
        """The whole answer. `events`: where its events gather as they come, for a caller that may cancel."""
        events = [] if events is None else events
        async for event in self.generate(prepared, timer):
            events.append(event)
        with timer.stage("post"):
            choices = collect_choices(events)
        return Completion(choices, usage_of(prepared.prompt, events), dict(timer.seconds))


async def _compiled(model: Model, grammar: Grammar) -> None:
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
    return Usage(len(prompt.token_ids), sum(len(e.token_ids) for e in events))
