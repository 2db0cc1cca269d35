"""One request, start to end: route → build context → generate → post-process.

Each stage takes the typed value the previous one returned; the timer wraps them from outside.
Retrieval joins between routing and context building when collections are configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from penstock.context.builder import ChatFormat, ContextBuilder
from penstock.observability.timing import StageTimer
from penstock.postprocess.choices import collect_choices
from penstock.postprocess.tool_calls import ToolCallExtractor
from penstock.router.router import Router
from penstock.types import (
    ChatRequest,
    Completion,
    Prompt,
    RequestPriority,
    RouteDecision,
    SamplingParams,
    TokenEvent,
    Usage,
)


class Model(ChatFormat, Protocol):
    """What the pipeline needs from a deployment."""

    def generate(
        self, prompt: Prompt, params: SamplingParams, priority: RequestPriority
    ) -> AsyncIterator[TokenEvent]: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    request: ChatRequest
    decision: RouteDecision
    prompt: Prompt


class Pipeline:
    def __init__(self, router: Router, builder: ContextBuilder, models: Mapping[str, Model]) -> None:
        self._router = router
        self._builder = builder
        self._models = models

    def prepare(self, request: ChatRequest, timer: StageTimer) -> Prepared:
        """Everything that can reject the request runs here, before a byte of the answer is sent."""
        with timer.stage("route"):
            decision = self._router.route(request)
        with timer.stage("context"):
            prompt, request = self._builder.build(request, self._models[decision.deployment])
        return Prepared(request, decision, prompt)

    async def generate(self, prepared: Prepared, timer: StageTimer) -> AsyncIterator[TokenEvent]:
        model = self._models[prepared.decision.deployment]
        request = prepared.request
        tool_calls = ToolCallExtractor(request) if request.calls_tools else None
        start = last = perf_counter()
        async for event in model.generate(prepared.prompt, request.sampling, request.priority):
            now = perf_counter()
            # The first event closes prefill (and the first token); everything after it is decode.
            timer.add("decode" if last > start else "prefill", now - last)
            if tool_calls is not None:
                with timer.stage("post"):
                    event = tool_calls.process(event)
            last = perf_counter()
            yield event

    async def complete(self, prepared: Prepared, timer: StageTimer) -> Completion:
        events = [event async for event in self.generate(prepared, timer)]
        with timer.stage("post"):
            choices = collect_choices(events)
        return Completion(choices, usage_of(prepared.prompt, events), dict(timer.seconds))


def usage_of(prompt: Prompt, events: list[TokenEvent]) -> Usage:
    return Usage(len(prompt.token_ids), sum(len(e.token_ids) for e in events))
