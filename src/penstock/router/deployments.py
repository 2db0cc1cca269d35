"""A deployment as the router drives it, whatever serves it: the codec that counts its tokens, its load,
the targets a request may go to (replicas, or the engine in this process), and a call to one of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from penstock.router.deployment_queue import DeploymentQueue
from penstock.types import ChatRequest, Grammar, Message, Prompt, RequestPriority, SamplingParams, TokenEvent


class Codec(Protocol):
    """A deployment's prompt side (the context builder's ChatFormat): template, tokenizer, window."""

    @property
    def context_window(self) -> int: ...

    def encode_chat(self, messages: Sequence[Message]) -> tuple[str, list[int]]: ...

    def encode(self, text: str) -> list[int]: ...


class Model(Codec, Protocol):
    """A model in this process (engine/served.py's ServedModel): its prompt side and its token stream."""

    def check_grammar(self, grammar: Grammar) -> None:
        """Raise InvalidRequest if the model cannot decode under this grammar (compiling it, cached)."""
        ...

    def generate(
        self, prompt: Prompt, params: SamplingParams, priority: RequestPriority
    ) -> AsyncIterator[TokenEvent]: ...


class Target(Protocol):
    @property
    def name(self) -> str: ...


class Deployment(Protocol):
    name: str
    native_tools: bool  # it returns tool calls parsed (a remote engine), else the pipeline reads them from text
    queue: DeploymentQueue  # where requests wait for it (the ladder enters it before choosing a target)

    @property
    def codec(self) -> Codec: ...

    def in_flight(self) -> int: ...

    def check_grammar(self, grammar: Grammar) -> None: ...

    def choose(self, prompt: Prompt, tried: frozenset[str]) -> tuple[Target, str] | None:
        """Where the request goes now and why (None: nowhere it has not been, or nowhere open)."""
        ...

    def stream(self, target: Target, prompt: Prompt, request: ChatRequest) -> AsyncIterator[TokenEvent]: ...


@dataclass(frozen=True, slots=True)
class InProcess:
    name: str = "in-process"


IN_PROCESS = InProcess()


class EngineDeployment:
    """The built-in engine in this process: one target, its load the requests it is generating."""

    native_tools = False

    def __init__(self, name: str, model: Model, queue: DeploymentQueue) -> None:
        self.name = name
        self.codec = model
        self.queue = queue
        self._in_flight = 0

    def in_flight(self) -> int:
        return self._in_flight

    def check_grammar(self, grammar: Grammar) -> None:
        self.codec.check_grammar(grammar)

    def choose(self, prompt: Prompt, tried: frozenset[str]) -> tuple[Target, str] | None:
        return None if IN_PROCESS.name in tried else (IN_PROCESS, "in_process")

    async def stream(self, target: Target, prompt: Prompt, request: ChatRequest) -> AsyncIterator[TokenEvent]:
        self._in_flight += 1
        try:
            async for event in self.codec.generate(prompt, request.sampling, request.priority):
                yield event
        finally:
            self._in_flight -= 1
