from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from penstock.engine.generator import Generator
from penstock.engine.loader import LoadedModel
from penstock.errors import ContextLengthExceeded
from penstock.types import Message, Prompt, SamplingParams, TokenEvent


def chat_prompt(loaded: LoadedModel, question: str) -> Prompt:
    text = loaded.chat_template.render([Message("user", question)])
    return Prompt(text, tuple(loaded.tokenizer.encode(text)))


async def collect(generator: Generator, prompt: Prompt, params: SamplingParams) -> list[TokenEvent]:
    return [event async for event in generator.generate(prompt, params)]


def joined(events: list[TokenEvent]) -> str:
    return "".join(event.text for event in events)


async def test_stop_strings_never_reach_the_stream(generator: Generator, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Write a short poem about autumn leaves.")
    full = joined(await collect(generator, prompt, SamplingParams(max_tokens=40, temperature=0)))
    stop = full[12:19]  # seven characters from the middle, most likely spanning a token boundary
    events = await collect(generator, prompt, SamplingParams(max_tokens=40, temperature=0, stop=("zzz", stop)))
    assert joined(events) == full[: full.index(stop)]
    assert all(stop not in event.text for event in events)
    assert events[-1].finish_reason == "stop"


async def test_max_tokens_finishes_with_length(generator: Generator, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Tell me a long story about a dragon.")
    events = await collect(generator, prompt, SamplingParams(max_tokens=5, temperature=0))
    assert [len(e.token_ids) for e in events] == [1] * 5
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]


async def test_eos_finishes_with_stop_and_no_special_text(generator: Generator, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "What is the capital of France?")
    events = await collect(generator, prompt, SamplingParams(max_tokens=30, temperature=0))
    assert events[-1].finish_reason == "stop"
    assert events[-1].token_ids[0] in loaded.tokenizer.eos_token_ids
    assert "Paris" in joined(events) and "<|im_end|>" not in joined(events)


async def test_seeded_sampling_is_reproducible(generator: Generator, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Name a few colours.")
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.95, top_k=50, seed=1234)
    first, second = await collect(generator, prompt, params), await collect(generator, prompt, params)
    assert [e.token_ids for e in first] == [e.token_ids for e in second]


async def test_closing_the_stream_stops_generation(
    generator: Generator, loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    forwards: list[int] = []
    forward: Callable[..., Any] = loaded.model.forward
    monkeypatch.setattr(loaded.model, "forward", lambda *a, **kw: forwards.append(1) or forward(*a, **kw))
    prompt = chat_prompt(loaded, "Count from one to two hundred in words.")
    stream = generator.generate(prompt, SamplingParams(max_tokens=200, temperature=0))
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    # One worker serves requests in order: once this one-token request is served, the closed one has ended.
    await asyncio.wait_for(collect(generator, prompt, SamplingParams(max_tokens=1)), timeout=30)
    assert len(forwards) < 20


async def test_a_prompt_that_does_not_fit_is_rejected(generator: Generator) -> None:
    prompt = Prompt("", (1, 2, 3))
    with pytest.raises(ContextLengthExceeded):
        await collect(generator, prompt, SamplingParams(max_tokens=generator.context_window))
    assert generator.context_window == 8192
    assert generator.count_tokens("hello world") == 2
