"""OpenAI request shapes → the pipeline's ChatRequest, and the pipeline's results → OpenAI response shapes."""

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
    ChoiceLogprobs,
    ChunkChoice,
    TokenLogprobOut,
    TopLogprobOut,
    UsageOut,
)
from penstock.types import Caller, ChatRequest, Completion, Message, SamplingParams, TokenLogprob, Usage


def to_chat_request(body: ChatCompletionRequest, request_id: str, caller: Caller, policy: PolicyConfig) -> ChatRequest:
    if len(body.messages) > policy.max_messages:
        raise InvalidRequest(f"at most {policy.max_messages} messages are accepted", param="messages")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    return ChatRequest(
        request_id=request_id,
        model=body.model,
        # OpenAI's "developer" role is the newer name for "system".
        messages=tuple(Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages),
        sampling=sampling_params(body),
        caller=caller,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )


def sampling_params(body: ChatCompletionRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=body.stop_strings(),
        stop_token_ids=tuple(body.stop_token_ids),
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        n=body.n,
    )


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def logprobs_out(logprobs: tuple[TokenLogprob, ...]) -> ChoiceLogprobs | None:
    if not logprobs:
        return None
    return ChoiceLogprobs(content=[_token_logprob(lp) for lp in logprobs])


def _token_logprob(lp: TokenLogprob) -> TokenLogprobOut:
    top = [TopLogprobOut(token=t, logprob=v, bytes=list(t.encode())) for t, v in lp.top]
    return TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()), top_logprobs=top)


def completion_body(completion: Completion, completion_id: str, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                index=c.index,
                message=AssistantMessage(content=c.text),
                finish_reason=c.finish_reason,
                logprobs=logprobs_out(c.logprobs),
            )
            for c in completion.choices
        ],
        usage=usage_out(completion.usage),
    )


def chunk(completion_id: str, model: str, choice: ChunkChoice) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=completion_id, created=int(time.time()), model=model, choices=[choice])


def usage_chunk(completion_id: str, model: str, usage: Usage) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=completion_id, created=int(time.time()), model=model, choices=[], usage=usage_out(usage)
    )
