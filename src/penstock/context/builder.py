"""Turns a chat request into the exact tokens the model will see, within its context window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from penstock.context.hardening import RETRIEVAL_POLICY
from penstock.context.passages import PassageBudget, select
from penstock.context.tools import output_grammar, prompt_messages
from penstock.errors import ContextLengthExceeded
from penstock.types import ChatRequest, Message, Prompt, Retrieval


class ChatFormat(Protocol):
    """What the builder needs from a model: its chat template, tokenizer and window."""

    @property
    def context_window(self) -> int: ...

    def encode_chat(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        """The rendered conversation and its tokens, message text never read as control tokens."""
        ...

    def encode(self, text: str) -> list[int]:
        """A raw prompt's tokens (/v1/completions: the client writes the control tokens itself)."""
        ...


class ContextBuilder:
    def __init__(self, default_max_tokens: int, max_per_source: int = 3) -> None:
        self._default_max_tokens = default_max_tokens
        self._max_per_source = max_per_source

    def build(
        self, request: ChatRequest, fmt: ChatFormat, retrieval: Retrieval | None = None
    ) -> tuple[Prompt, ChatRequest]:
        """The prompt, and the request with max_tokens fitted to the room the prompt leaves and the
        grammar its output must follow. With retrieval, the passages that fit its budget are quoted
        in the system message and numbered for citation; if retrieval failed or found nothing, the
        prompt carries a fixed answer instead and the model is not asked."""
        if retrieval is not None and retrieval.status != "ok":
            return Prompt("", (), answer=NOT_ENOUGH[retrieval.status]), request
        selected, conversation = None, ()
        if request.raw_prompt is not None:
            text, ids = request.raw_prompt, fmt.encode(request.raw_prompt)
        else:
            messages, conversation = prompt_messages(request), request.messages
            if retrieval is not None and request.retrieval is not None:
                opts = request.retrieval
                budget = PassageBudget(opts.max_context_tokens, opts.top_k, self._max_per_source)
                selected = select(retrieval.passages, budget, lambda text: len(fmt.encode(text)))
                messages = with_passages(messages, selected.blocks)
                conversation = with_passages(conversation, selected.blocks)
            text, ids = fmt.encode_chat(messages)
        grammar = output_grammar(request)  # compiled by the pipeline, off the event loop
        token_ids = tuple(ids)
        room = fmt.context_window - len(token_ids)
        explicit = request.sampling.max_tokens
        wanted = explicit or min(self._default_max_tokens, request.caller.scopes.max_tokens or self._default_max_tokens)
        if room < 1 or (explicit is not None and explicit > room):
            raise ContextLengthExceeded(
                f"This model's maximum context length is {fmt.context_window} tokens; the messages use "
                f"{len(token_ids)} and max_tokens asks for {wanted}. Shorten the messages or lower max_tokens.",
                param="messages",
            )
        fitted = replace(request, sampling=replace(request.sampling, max_tokens=min(wanted, room), grammar=grammar))
        if selected is None:
            return Prompt(text=text, token_ids=token_ids, messages=conversation), fitted
        return Prompt(text, token_ids, selected.passages, selected.flagged_lines, messages=conversation), fitted


# The fallback ladder's last rung: no passages to answer from, so say so and ask, rather than guess.
NOT_ENOUGH = {
    "empty": (
        "I could not find anything in the available documents about that, so I do not have enough "
        "information to answer. Could you rephrase the question, or tell me which document or topic it concerns?"
    ),
    "failed": (
        "I cannot search the documents right now, so I do not have enough information to answer that "
        "reliably. Could you try again in a moment, or tell me more about what you need?"
    ),
}


def with_passages(messages: tuple[Message, ...], blocks: Sequence[str]) -> tuple[Message, ...]:
    """The retrieval policy and the quoted passages, at the end of the system message."""
    context = RETRIEVAL_POLICY + "\n\n" + "\n\n".join(blocks) if blocks else RETRIEVAL_POLICY
    if messages and messages[0].role == "system":
        return (replace(messages[0], content=f"{messages[0].content}\n\n{context}"), *messages[1:])
    return (Message("system", context), *messages)
