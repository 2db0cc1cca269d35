"""Turns a chat request into the exact tokens the model will see, within its context window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from penstock.context.tools import output_grammar, prompt_messages
from penstock.errors import ContextLengthExceeded
from penstock.types import ChatRequest, Grammar, Message, Prompt


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

    def check_grammar(self, grammar: Grammar) -> None:
        """Raise InvalidRequest if the model cannot decode under this grammar."""
        ...


class ContextBuilder:
    def __init__(self, default_max_tokens: int) -> None:
        self._default_max_tokens = default_max_tokens

    def build(self, request: ChatRequest, fmt: ChatFormat) -> tuple[Prompt, ChatRequest]:
        """The prompt, and the request with max_tokens fitted to the room the prompt leaves and the
        grammar its output must follow."""
        if request.raw_prompt is not None:
            text, ids = request.raw_prompt, fmt.encode(request.raw_prompt)
        else:
            text, ids = fmt.encode_chat(prompt_messages(request))
        grammar = output_grammar(request)
        if grammar is not None:
            fmt.check_grammar(grammar)
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
        return Prompt(text=text, token_ids=token_ids), fitted
