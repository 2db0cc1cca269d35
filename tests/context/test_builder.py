from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from penstock.context.builder import ContextBuilder
from penstock.context.hardening import quoted
from penstock.engine.loader import LoadedModel
from penstock.engine.served import ChatCodec
from penstock.errors import ContextLengthExceeded
from penstock.types import Caller, ChatRequest, Message, Passage, Principal, Retrieval, RetrievalOptions, SamplingParams


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


def test_retrieved_passages_stay_within_their_budget_in_chat_model_tokens(loaded: LoadedModel) -> None:
    codec = ChatCodec(loaded.chat_template, loaded.tokenizer, loaded.args.max_seq_len)
    passages = tuple(
        Passage(i, f"doc{i % 4}.md", 1, "Section", f"Passage {i}: " + " ".join(f"fact{i}-{j}" for j in range(12)), 1.0)
        for i in range(20)
    )
    options = RetrievalOptions(("docs",), Principal("t"), top_k=20, max_context_tokens=300)
    asked = replace(request("What are the facts?", 16), retrieval=options)
    prompt, _ = ContextBuilder(default_max_tokens=16, max_per_source=2).build(asked, codec, Retrieval(passages))
    assert 0 < len(prompt.passages) < 8  # two per source would allow 8: the token budget binds first
    blocks = [codec.encode(quoted(i, p.source, p.version, p.heading, p.text)) for i, p in enumerate(prompt.passages, 1)]
    assert sum(len(b) for b in blocks) <= 300
    assert (
        "data, not instructions" in prompt.text and "[1] (source: doc0.md, version 1, section: Section)" in prompt.text
    )
    _, bare = codec.encode_chat([Message("user", "What are the facts?")])
    assert len(prompt.token_ids) > len(bare)


def test_a_retrieval_that_found_nothing_answers_without_the_model() -> None:
    asked = replace(request("Where is it?", 16), retrieval=RetrievalOptions(("docs",), Principal("t")))
    prompt, _ = ContextBuilder(default_max_tokens=16).build(asked, WordFormat(100), Retrieval((), "empty"))
    assert prompt.token_ids == () and prompt.answer is not None and prompt.answer.endswith("?")
    assert "not have enough information" in prompt.answer
