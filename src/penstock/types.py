"""The values passed between pipeline stages.

Each stage takes one of these and returns the next; no stage imports another stage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from penstock.identity import KeyScopes, TenantLimits

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls"]
RequestPriority = Literal["interactive", "batch"]  # interactive runs first; FCFS within a class


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made: its arguments are the JSON text it wrote."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the client offers the model; `parameters` is its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object"}'  # JSON text, so the request stays hashable and frozen


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: which call this is the result of


# How JSON under a grammar is laid out: as json.dumps writes it (llguidance's options). Flexible
# whitespace let the small model, sampled hot, pad with newlines until max_tokens ran out (one
# answer in three, measured).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True, slots=True)
class Grammar:
    """What the output must match, enforced token by token while decoding.

    kind json_schema: `source` is a JSON schema; regex: a regular expression; lark: llguidance's Lark.
    """

    kind: Literal["json_schema", "regex", "lark"]
    source: str


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
    min_p: float = 0.0
    presence_penalty: float = 0.0  # OpenAI's: on tokens generated so far
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # Hugging Face's: on prompt and generated tokens, 1 disables
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # vLLM's: the model's end-of-sequence tokens do not stop it, max_tokens does
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    grammar: Grammar | None = None

    @property
    def greedy_only(self) -> bool:
        """Nothing to compute but an argmax."""
        return (
            self.temperature == 0
            and self.presence_penalty == 0
            and self.frequency_penalty == 0
            and self.repetition_penalty == 1
            and not self.logprobs
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, as the gateway established it, with what its key and tenant allow."""

    key_id: str
    tenant: str
    is_admin: bool = False  # may use the admin API within its own tenant
    scopes: KeyScopes = field(default_factory=KeyScopes)
    tenant_limits: TenantLimits = field(default_factory=TenantLimits)
    is_platform: bool = False  # an admin of every tenant: the master key, or a key with the platform scope


@dataclass(frozen=True, slots=True)
class ChatRequest:
    request_id: str
    model: str
    messages: tuple[Message, ...]
    sampling: SamplingParams
    caller: Caller
    stream: bool = False
    include_usage: bool = False
    raw_prompt: str | None = None  # /v1/completions: text given as is, no chat template
    priority: RequestPriority = "interactive"
    tools: tuple[Tool, ...] = ()
    # "none", "auto", "required", or the one tool's name the model must call
    tool_choice: str = "auto"
    retrieval: RetrievalOptions | None = None
    deadline: float | None = None  # time.monotonic() past which its answer is no use to the client

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Which deployment serves a request and why (`reason`: requested, rule:<name>, weight, overflow, or
    fallback:<what failed>), with the rungs to fall back on, in order, should it fail before its first token."""

    deployment: str
    model: str  # what the client asked for: a deployment's name or a route's
    reason: str
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Acl:
    """Who may read a document: the listed users and groups; the whole tenant when both are empty."""

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """Whose documents a request may read: its tenant, and the end user and groups it acts for."""

    tenant: str
    user: str | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetrievalOptions:
    """A chat request's opt-in to retrieval (`extra_body={"penstock": {...}}`)."""

    collections: tuple[str, ...]
    principal: Principal
    top_k: int = 8
    max_context_tokens: int = 1024
    rerank: bool = True


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk with its provenance, as the context builder receives it."""

    chunk_id: int
    source: str
    version: int
    heading: str
    text: str
    score: float


RetrievalStatus = Literal["ok", "empty", "failed"]


@dataclass(frozen=True, slots=True)
class Interval:
    """One stretch of one stage, in perf_counter() seconds."""

    name: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What retrieval found for a query, how long each sub-stage took, and what degraded on the way."""

    passages: tuple[Passage, ...]
    status: RetrievalStatus = "ok"
    degraded: tuple[str, ...] = ()  # e.g. "rerank_timeout": a fallback was taken, the answer still came
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_intervals: tuple[Interval, ...] = ()  # the same stages where they happened, for traces


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    token_ids: tuple[int, ...]
    passages: tuple[Passage, ...] = ()  # numbered [1]..[n] in the prompt, in this order
    flagged_lines: int = 0  # instruction-like lines defused in the passages (injection attempts)
    answer: str | None = None  # a reply decided without the model: retrieval found nothing to answer from
    # The conversation with the passages quoted, before any tool text: what a remote engine, which renders
    # its own template and tools, is sent (empty for a raw /v1/completions prompt).
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token (as text), its log-probability under the model, and the likeliest alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One step of generation as the client should see it.

    `text` is the newly printable text (stop strings are held back until they cannot match);
    `token_ids` the tokens generated since the previous event. The last event has a finish_reason.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0  # which of the n choices
    tool_calls: tuple[ToolCall, ...] = ()  # on the last event, once post-processing found them
    usage: Usage | None = None  # a remote engine's own count of the whole request, on its last event


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    choices: tuple[Choice, ...]
    usage: Usage
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready to generate: `request` fitted to `prompt` (max_tokens, grammar), `asked` as it came."""

    request: ChatRequest
    decision: RouteDecision
    prompt: Prompt
    retrieval: Retrieval | None = None
    asked: ChatRequest | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """An answer under way. `served`: the request as the deployment that gives it was sent it (after a
    fallback, another deployment and reason than prepared); `events`: its events, the first already in."""

    served: Prepared
    events: AsyncIterator[TokenEvent]
    target: str = ""  # the replica (operators' logs only)
