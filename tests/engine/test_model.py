"""Our Transformer against transformers' Llama on the same GGUF weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from penstock.engine.async_engine import AsyncEngine
from penstock.engine.loader import LoadedModel
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, SeqSlice
from penstock.types import Message, Prompt, SamplingParams

CONVERSATIONS = [
    [Message("user", "What is the capital of France?")],
    [Message("user", "Write a haiku about the sea.")],
    [Message("user", "List three prime numbers greater than 10.")],
    [Message("system", "You are a terse assistant."), Message("user", "Explain what a Python list comprehension is.")],
    [
        Message("user", "Hi! My name is Ada."),
        Message("assistant", "Hello Ada! How can I help you today?"),
        Message("user", "Translate 'good morning' into Spanish, then tell me my name."),
    ],
]
NEW_TOKENS = 24


def chat_ids(loaded: LoadedModel, messages: list[Message]) -> list[int]:
    return loaded.tokenizer.encode(loaded.chat_template.render(messages))


async def generated_ids(engine: AsyncEngine, ids: list[int]) -> list[int]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    return [t async for event in engine.generate(Prompt("", tuple(ids)), params) for t in event.token_ids]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
async def test_greedy_generation_matches_transformers(
    engine: AsyncEngine, loaded: LoadedModel, hf_model: Any, messages: list[Message]
) -> None:
    ids = chat_ids(loaded, messages)
    ours = await generated_ids(engine, ids)
    with torch.inference_mode():
        reference = hf_model.generate(
            torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=2, pad_token_id=2
        )[0, len(ids) :].tolist()
    assert ours == reference


def test_logits_match_transformers(loaded: LoadedModel, hf_model: Any) -> None:
    ids = torch.tensor([chat_ids(loaded, CONVERSATIONS[3])])
    with torch.inference_mode():
        ours = loaded.model(ids, torch.arange(ids.shape[1]))
        reference = hf_model(ids).logits
    torch.testing.assert_close(ours, reference, atol=2e-3, rtol=1e-3)


def test_cached_decoding_matches_a_full_forward(loaded: LoadedModel) -> None:
    """A prefill, then a chunk of three continuing it, then single tokens: the logits of one forward."""
    ids = torch.tensor([chat_ids(loaded, CONVERSATIONS[0])])
    n = ids.shape[1]
    cache = PagedKVCache(loaded.args, -(-n // 16), 16, device="cpu", dtype=torch.float32)
    table = range(cache.num_blocks)

    def step(start: int, end: int) -> torch.Tensor:
        context = PagedAttention.build(cache, [SeqSlice(table, start, end - start)], "cpu")
        return loaded.model(ids[:, start:end], torch.arange(start, end), context)

    with torch.inference_mode():
        full = loaded.model(ids, torch.arange(n))
        pieces = [step(0, n - 6), step(n - 6, n - 3)] + [step(i, i + 1) for i in range(n - 3, n)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
