"""OpenAI request shapes → the pipeline's ChatRequest, and Completions → OpenAI response shapes."""

from __future__ import annotations

import time

from penstock.config import PolicyConfig
from penstock.errors import InvalidRequest
from penstock.gateway.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    UsageOut,
)
from penstock.types import Caller, ChatRequest, Completion, Message, SamplingParams, Usage


def to_chat_request(body: ChatCompletionRequest, request_id: str, caller: Caller, policy: PolicyConfig) -> ChatRequest:
    _reject_unsupported(body)
    if len(body.messages) > policy.max_messages:
        raise InvalidRequest(f"at most {policy.max_messages} messages are accepted", param="messages")
    return ChatRequest(
        request_id=request_id,
        model=body.model,
        # OpenAI's "developer" role is the newer name for "system".
        messages=tuple(Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages),
        sampling=SamplingParams(
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=body.stop_strings(),
        ),
        caller=caller,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )


def _reject_unsupported(body: ChatCompletionRequest) -> None:
    # Accepting these and ignoring them would return something other than what was asked for.
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise InvalidRequest(f"{name} is not supported by this server yet", param=name)
    if body.logprobs:
        raise InvalidRequest("logprobs is not supported by this server yet", param="logprobs")


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def completion_body(completion: Completion, completion_id: str, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content=completion.text), finish_reason=completion.finish_reason)],
        usage=usage_out(completion.usage),
    )


def chunk(completion_id: str, model: str, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
    )


def usage_chunk(completion_id: str, model: str, usage: Usage) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=completion_id, created=int(time.time()), model=model, choices=[], usage=usage_out(usage)
    )
