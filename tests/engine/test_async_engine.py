from __future__ import annotations

import pytest

from penstock.engine.async_engine import AsyncEngine
from penstock.engine.loader import LoadedModel
from penstock.errors import ContextLengthExceeded
from penstock.types import Message, Prompt, SamplingParams, TokenEvent


def chat_prompt(loaded: LoadedModel, question: str) -> Prompt:
    text = loaded.chat_template.render([Message("user", question)])
    return Prompt(text, tuple(loaded.tokenizer.encode(text)))


async def collect(engine: AsyncEngine, prompt: Prompt, params: SamplingParams) -> list[TokenEvent]:
    return [event async for event in engine.generate(prompt, params)]


def joined(events: list[TokenEvent]) -> str:
    return "".join(event.text for event in events)


async def test_stop_strings_never_reach_the_stream(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Write a short poem about autumn leaves.")
    full = joined(await collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0)))
    stop = full[12:19]  # seven characters from the middle, most likely spanning a token boundary
    events = await collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0, stop=("zzz", stop)))
    assert joined(events) == full[: full.index(stop)]
    assert all(stop not in event.text for event in events)
    assert events[-1].finish_reason == "stop"


async def test_max_tokens_finishes_with_length(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Tell me a long story about a dragon.")
    events = await collect(engine, prompt, SamplingParams(max_tokens=5, temperature=0))
    assert [len(e.token_ids) for e in events] == [1] * 5
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]


async def test_eos_finishes_with_stop_and_no_special_text(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "What is the capital of France?")
    events = await collect(engine, prompt, SamplingParams(max_tokens=30, temperature=0))
    assert events[-1].finish_reason == "stop"
    assert events[-1].token_ids[0] in loaded.tokenizer.eos_token_ids
    assert "Paris" in joined(events) and "<|im_end|>" not in joined(events)


async def test_ignore_eos_generates_through_eos_to_max_tokens(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "What is the capital of France?")
    events = await collect(engine, prompt, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True))
    assert len(events) == 60 and events[-1].finish_reason == "length"
    assert any(e.token_ids[0] in loaded.tokenizer.eos_token_ids for e in events[:-1])  # it passed an eos


async def test_seeded_sampling_is_reproducible(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Name a few colours.")
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.95, top_k=50, seed=1234)
    first, second = await collect(engine, prompt, params), await collect(engine, prompt, params)
    assert [e.token_ids for e in first] == [e.token_ids for e in second]


async def test_closing_the_stream_aborts_and_frees_its_blocks(engine: AsyncEngine, loaded: LoadedModel) -> None:
    before = await engine.stats()
    prompt = chat_prompt(loaded, "Count from one to two hundred in words.")
    stream = engine.generate(prompt, SamplingParams(max_tokens=200, temperature=0))
    await anext(stream)
    await anext(stream)
    assert (await engine.stats()).running == 1
    await stream.aclose()
    after = await engine.stats()
    assert (after.running, after.waiting) == (0, 0)
    assert after.free_blocks == after.total_blocks == before.total_blocks


async def test_a_prompt_that_does_not_fit_is_rejected(engine: AsyncEngine) -> None:
    prompt = Prompt("", (1, 2, 3))
    with pytest.raises(ContextLengthExceeded):
        await collect(engine, prompt, SamplingParams(max_tokens=engine.context_window))
    assert engine.context_window == 8192
