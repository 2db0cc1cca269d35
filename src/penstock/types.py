"""The values passed between pipeline stages.

Each stage takes one of these and returns the next; no stage imports another stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """OpenAI sampling parameters; temperature 0 means greedy.

    max_tokens None means "the deployment default, within what the context window leaves";
    the context builder always resolves it before generation.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, as the gateway established it."""

    key_id: str
    tenant: str
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class ChatRequest:
    request_id: str
    model: str
    messages: tuple[Message, ...]
    sampling: SamplingParams
    caller: Caller
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True, slots=True)
class RouteDecision:
    deployment: str
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk with its provenance."""

    chunk_id: str
    source: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    token_ids: tuple[int, ...]
    passages: tuple[Passage, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One step of generation as the client should see it.

    `text` is the newly printable text (stop strings are held back until they cannot match);
    `token_ids` the tokens generated since the previous event. The last event has a finish_reason.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage
    stage_seconds: dict[str, float] = field(default_factory=dict)
