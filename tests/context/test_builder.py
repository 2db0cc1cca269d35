from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from penstock.context.builder import ContextBuilder
from penstock.errors import ContextLengthExceeded
from penstock.types import Caller, ChatRequest, Message, SamplingParams


@dataclass
class WordFormat:
    """A chat format whose tokens are words, so budgets are easy to reason about."""

    context_window: int

    def encode_chat(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        text = " ".join(f"{m.role}: {m.content}" for m in messages)
        return text, self.encode(text)

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def request(content: str, max_tokens: int | None) -> ChatRequest:
    return ChatRequest(
        request_id="r",
        model="m",
        messages=(Message("user", content),),
        sampling=SamplingParams(max_tokens=max_tokens),
        caller=Caller(key_id="k", tenant="t"),
    )


def test_prompt_holds_the_rendered_template_and_its_tokens() -> None:
    prompt, _ = ContextBuilder(default_max_tokens=8).build(request("one two", 4), WordFormat(100))
    assert prompt.text == "user: one two"
    assert prompt.token_ids == (5, 3, 3)


def test_default_max_tokens_is_fitted_to_the_room_left() -> None:
    _, fitted = ContextBuilder(default_max_tokens=50).build(request("a b c", None), WordFormat(10))
    assert fitted.sampling.max_tokens == 6


def test_explicit_max_tokens_beyond_the_window_is_rejected() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        ContextBuilder(default_max_tokens=5).build(request("a b c", 7), WordFormat(10))
    assert info.value.status == 400
    assert info.value.param == "messages"


def test_prompt_that_fills_the_window_is_rejected() -> None:
    with pytest.raises(ContextLengthExceeded):
        ContextBuilder(default_max_tokens=5).build(request("a b c d e f g h i", None), WordFormat(10))
