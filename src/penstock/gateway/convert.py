"""OpenAI request shapes → the pipeline's ChatRequest."""

from __future__ import annotations

import time

from penstock.config import PolicyConfig, RetrievalConfig
from penstock.errors import InvalidRequest
from penstock.gateway.principal import principal_of
from penstock.gateway.schemas import (
    MAX_DEADLINE_S,
    ChatCompletionRequest,
    CompletionRequest,
    PenstockOptions,
    SamplingFields,
)
from penstock.gateway.structured import check_schema_sizes, message_of, output_grammar, tools_of
from penstock.router.scopes import check_collections, check_output, check_scopes
from penstock.types import Caller, ChatRequest, RequestPriority, RetrievalOptions, SamplingParams

DEADLINE_HEADER = "x-penstock-deadline-ms"


def chat_request(
    body: ChatCompletionRequest,
    request_id: str,
    caller: Caller,
    policy: PolicyConfig,
    retrieval: RetrievalConfig,
    deadline: float | None = None,
) -> ChatRequest:
    """`deadline`: the one the request's header set, if any (the body's `penstock.timeout` is checked here)."""
    if len(body.messages) > policy.max_messages:
        raise InvalidRequest(f"at most {policy.max_messages} messages are accepted", param="messages")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    check_schema_sizes(body)
    max_tokens = body.max_completion_tokens or body.max_tokens
    tools, tool_choice = tools_of(body)
    check_scopes(caller, body.model, [t.name for t in tools])
    check_output(caller, max_tokens, body.n, policy)
    return ChatRequest(
        request_id=request_id,
        model=body.model,
        messages=tuple(message_of(m) for m in body.messages),
        sampling=sampling_params(body, max_tokens, logprobs=body.logprobs, top=body.top_logprobs),
        caller=caller,
        stream=body.stream,
        include_usage=body.include_usage,
        priority=priority_of(body.priority, caller),
        tools=tools,
        tool_choice=tool_choice,
        retrieval=retrieval_options(body.penstock or PenstockOptions(), caller, retrieval),
        deadline=deadline if body.penstock is None or body.penstock.timeout is None else arrived(body.penstock.timeout),
    )


def priority_of(asked: RequestPriority, caller: Caller) -> RequestPriority:
    """The tier a request runs at: what it asks for, within its tenant's highest."""
    return "batch" if caller.tenant_limits.max_priority == "batch" else asked


def retrieval_options(options: PenstockOptions, caller: Caller, defaults: RetrievalConfig) -> RetrievalOptions | None:
    """The request's retrieval, its own options over the deployment's defaults; None if no collection."""
    collections = options.collections if options.collections is not None else defaults.default_collections
    if not collections:
        return None
    check_collections(caller, collections)
    return RetrievalOptions(
        collections=tuple(collections),
        principal=principal_of(caller, options.user, options.groups),
        top_k=options.top_k or defaults.top_k,
        max_context_tokens=options.max_context_tokens or defaults.max_context_tokens,
        rerank=defaults.rerank if options.rerank is None else options.rerank,
    )


def deadline_of(header: str | None) -> float | None:
    """The deadline an `x-penstock-deadline-ms` header sets (milliseconds from now), or None without one."""
    if header is None:
        return None
    try:
        milliseconds = float(header)
    except ValueError:
        milliseconds = -1.0
    if not 0 < milliseconds <= MAX_DEADLINE_S * 1000:  # NaN fails this too
        raise InvalidRequest(
            f"{DEADLINE_HEADER} must be a number of milliseconds, above 0 and at most {MAX_DEADLINE_S * 1000:g}",
            param=DEADLINE_HEADER,
        )
    return arrived(milliseconds / 1000)


def arrived(timeout_s: float) -> float:
    return time.monotonic() + timeout_s


def text_request(
    body: CompletionRequest, request_id: str, caller: Caller, policy: PolicyConfig, deadline: float | None = None
) -> ChatRequest:
    text = body.prompt_text()
    if text is None:
        raise InvalidRequest("prompt must be one string (batched prompts are not supported)", param="prompt")
    check_scopes(caller, body.model, [])
    check_output(caller, body.max_tokens, body.n, policy)
    check_schema_sizes(body)
    logprobs = body.logprobs is not None
    return ChatRequest(
        request_id=request_id,
        model=body.model,
        messages=(),
        sampling=sampling_params(body, body.max_tokens, logprobs=logprobs, top=body.logprobs or 0),
        caller=caller,
        stream=body.stream,
        include_usage=body.include_usage,
        raw_prompt=text,
        priority=priority_of(body.priority, caller),
        deadline=deadline,
    )


def sampling_params(body: SamplingFields, max_tokens: int | None, *, logprobs: bool, top: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
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
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        top_logprobs=top,
        n=body.n,
        grammar=output_grammar(body),
    )
