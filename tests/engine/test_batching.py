"""The engine gives every request what it would get alone, whatever runs beside it.

Greedy tokens from a continuous batch (chunked prefills, prefix-cache hits, preemptions) equal those
of the plain one-sequence fp32 reference loop: through the batch-invariant kernels (the default), and
through the fast path's fp32 SDPA and native attention. (test_determinism.py holds the bit-for-bit
claims of the default serving configuration.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch

from penstock.engine.async_engine import AsyncEngine
from penstock.engine.llm_engine import EngineConfig
from penstock.engine.loader import LoadedModel
from penstock.engine.scheduler import SchedulerConfig
from penstock.types import Message, Prompt, SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about rivers.",
    "Explain gravity to a child in two sentences.",
    "List three colours.",
    "What is 12 times 12?",
    "Name a famous painter.",
]
NEW_TOKENS = 20


def prompt_of(loaded: LoadedModel, question: str) -> Prompt:
    text = loaded.chat_template.render([Message("user", question)])
    return Prompt(text, tuple(loaded.tokenizer.encode(text)))


@torch.inference_mode()
def reference(loaded: LoadedModel, ids: tuple[int, ...], n: int) -> list[int]:
    """Greedy tokens from whole-sequence forwards (no cache at all), stopping at eos like the engine."""
    out: list[int] = []
    for _ in range(n):
        sequence = [*ids, *out]
        logits = loaded.model(torch.tensor([sequence]), torch.arange(len(sequence)), logits_at=torch.tensor([-1]))
        out.append(int(logits[0, -1].argmax()))
        if out[-1] in loaded.tokenizer.eos_token_ids:
            break
    return out


@pytest.fixture(scope="module")
def expected(loaded: LoadedModel) -> dict[str, list[int]]:
    return {q: reference(loaded, prompt_of(loaded, q).token_ids, NEW_TOKENS) for q in QUESTIONS}


def engine_with(loaded: LoadedModel, **config: object) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(lambda: loaded, lambda _: EngineConfig(**config))
    yield engine
    engine.close()


async def tokens(engine: AsyncEngine, prompt: Prompt, params: SamplingParams) -> list[int]:
    return [t async for event in engine.generate(prompt, params) for t in event.token_ids]


async def run_all(engine: AsyncEngine, loaded: LoadedModel, questions: list[str]) -> dict[str, list[int]]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)
    results = await asyncio.gather(*(tokens(engine, prompt_of(loaded, q), params) for q in questions))
    return dict(zip(questions, results, strict=True))


CONFIGS = {
    "roomy": {},
    "chunked-prefill": {"scheduler": SchedulerConfig(max_num_seqs=8, max_batched_tokens=16)},
    "few-seqs": {"scheduler": SchedulerConfig(max_num_seqs=2, max_batched_tokens=64)},
    # 6 prompts of ~40 tokens + 20 new need ~24 blocks of 16: a quarter of that forces preemption
    "cache-tight": {"kv_cache_tokens": 6 * 16},
    # the fast path: SDPA, then decodes through the native kernel; with a tight cache, chunks and
    # recomputes go beside them
    "fast-sdpa": {"determinism": "fast"},
    "fast-native-attention": {"determinism": "fast", "native_attention": True},
    "fast-native-attention-tight": {"determinism": "fast", "native_attention": True, "kv_cache_tokens": 6 * 16},
}
FORWARDS = {"fast-sdpa": "sdpa", "fast-native-attention": "native", "fast-native-attention-tight": "native"}


@pytest.mark.parametrize("name", CONFIGS)
async def test_greedy_batch_equals_the_unbatched_reference(
    loaded: LoadedModel, expected: dict[str, list[int]], name: str
) -> None:
    for engine in engine_with(loaded, **CONFIGS[name]):
        assert engine.core.runner.forward.name == FORWARDS.get(name, "batch_invariant")  # built here: cc is present
        assert await run_all(engine, loaded, QUESTIONS) == expected
        stats = await engine.stats()
        assert stats.free_blocks == stats.total_blocks
        if name.endswith("tight"):
            assert stats.preemptions > 0


async def test_warm_prefix_cache_changes_nothing_but_speed(loaded: LoadedModel, expected: dict[str, list[int]]) -> None:
    for engine in engine_with(loaded):
        cold = await run_all(engine, loaded, QUESTIONS[:3])
        warm = await run_all(engine, loaded, QUESTIONS[:3])
        assert cold == warm == {q: expected[q] for q in QUESTIONS[:3]}
        assert (await engine.stats()).prefix_hit_rate > 0.4


async def test_seeded_sampling_ignores_its_neighbours(loaded: LoadedModel) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=99)
    prompt = prompt_of(loaded, "Tell me a story.")
    for engine in engine_with(loaded):
        alone = await tokens(engine, prompt, params)
        noisy = [prompt_of(loaded, q) for q in QUESTIONS]
        crowded, *_ = await asyncio.gather(
            tokens(engine, prompt, params), *(tokens(engine, p, SamplingParams(max_tokens=12)) for p in noisy)
        )
        assert crowded == alone


async def test_n_choices_share_the_prompt_and_sample_apart(loaded: LoadedModel, expected: dict[str, list[int]]) -> None:
    question = QUESTIONS[2]
    for engine in engine_with(loaded):
        greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, n=3)
        choices: dict[int, list[int]] = {0: [], 1: [], 2: []}
        async for event in engine.generate(prompt_of(loaded, question), greedy):
            choices[event.index] += event.token_ids
        assert list(choices.values()) == [expected[question]] * 3

        seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=5, n=3)
        runs = []
        for _ in range(2):
            run: dict[int, list[int]] = {0: [], 1: [], 2: []}
            async for event in engine.generate(prompt_of(loaded, question), seeded):
                run[event.index] += event.token_ids
            runs.append(run)
        assert runs[0] == runs[1]
        assert len({tuple(tokens) for tokens in runs[0].values()}) > 1
        stats = await engine.stats()
        assert stats.free_blocks == stats.total_blocks


def test_forks_reference_the_parents_blocks(loaded: LoadedModel) -> None:
    from penstock.engine.llm_engine import LLMEngine
    from penstock.engine.sampler import request_rng
    from penstock.engine.sequence import Sequence

    core = LLMEngine(loaded, EngineConfig(block_size=16, kv_cache_tokens=1024))
    prompt = list(prompt_of(loaded, "Describe a sunrise over the mountains in detail.").token_ids)
    assert len(prompt) > 32 and len(prompt) % 16  # two full blocks at least, and a partial one
    seq = Sequence(prompt, SamplingParams(max_tokens=4, temperature=0, n=3), max_tokens=4, rng=request_rng(0, "cpu"))
    core.add(seq, lambda _: None)
    core.step()  # the whole prompt, then the fork
    seqs = core.scheduler.running
    assert len(seqs) == 3
    full = len(prompt) // 16
    assert all(s.block_table[:full] == seq.block_table[:full] for s in seqs)
    assert len({s.block_table[full] for s in seqs}) == 3  # each choice has its own tail block
    assert all(core.blocks.blocks[b].ref_count == 3 for b in seq.block_table[:full])
    while core.has_work():
        core.step()
    assert core.blocks.num_free == len(core.blocks.blocks)
