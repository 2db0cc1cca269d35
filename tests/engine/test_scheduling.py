"""Block accounting and scheduling without a model: tokens are made up, the bookkeeping is real."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.engine.block_manager import BlockManager
from penstock.engine.scheduler import Scheduler, SchedulerConfig
from penstock.engine.sequence import Priority, Sequence, Status
from penstock.types import SamplingParams

BLOCK = 4


def make_seq(
    prompt: list[int], max_tokens: int = 8, priority: Priority = Priority.INTERACTIVE, at: float = 0
) -> Sequence:
    return Sequence(
        prompt, SamplingParams(), max_tokens=max_tokens, rng=torch.Generator(), priority=priority, arrival=at
    )


def advance(scheduler: Scheduler, rng: random.Random) -> list[Sequence]:
    """One step: pretend the model ran every chunk; sampling chunks append a token. Returns finished."""
    finished = []
    for chunk in scheduler.schedule():
        seq = chunk.seq
        seq.num_computed += chunk.length
        if chunk.samples:
            seq.token_ids.append(rng.randrange(50))
            if seq.num_completion >= seq.max_tokens:
                finished.append(seq)
        scheduler.blocks.register(seq)
    for seq in finished:
        scheduler.remove(seq)
    return finished


def check_invariants(blocks: BlockManager, live: list[Sequence]) -> None:
    refs = [0] * len(blocks.blocks)
    for seq in live:
        for block_id in seq.block_table:
            refs[block_id] += 1
        assert len(seq.block_table) * blocks.block_size >= seq.num_computed
    assert refs == [b.ref_count for b in blocks.blocks]
    assert set(blocks.free) == {b.block_id for b in blocks.blocks if b.ref_count == 0}
    for key, block_id in blocks.cached.items():
        assert blocks.blocks[block_id].key == key


actions = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.sampled_from(list(Priority))),
        st.tuples(st.just("abort"), st.integers(0, 100)),
        st.tuples(st.just("step"), st.integers(1, 4)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(actions=actions, num_blocks=st.integers(12, 40), seed=st.integers(0, 2**16))
def test_blocks_return_to_all_free_after_any_mix_of_add_abort_and_finish(
    actions: list[tuple], num_blocks: int, seed: int
) -> None:
    rng = random.Random(seed)
    blocks = BlockManager(num_blocks, BLOCK)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=6, max_batched_tokens=16), blocks)
    live: list[Sequence] = []
    shared_prefix = [rng.randrange(50) for _ in range(8)]  # so prefix-cache hits happen
    for action in actions:
        if action[0] == "add":
            _, prompt_len, max_tokens, priority = action
            if blocks.blocks_needed(prompt_len + max_tokens) > num_blocks:
                continue  # the engine refuses these up front
            prompt = (shared_prefix + [rng.randrange(50) for _ in range(prompt_len)])[:prompt_len]
            seq = make_seq(prompt, max_tokens, priority, at=len(live))
            scheduler.add(seq)
            live.append(seq)
        elif action[0] == "abort" and live:
            seq = live.pop(action[1] % len(live))
            scheduler.remove(seq)
        else:
            for _ in range(action[1]):
                for done in advance(scheduler, rng):
                    live.remove(done)
        check_invariants(blocks, live)
    for seq in live:
        scheduler.remove(seq)
    assert blocks.num_free == num_blocks
    assert all(b.ref_count == 0 for b in blocks.blocks)
    assert not scheduler.running and scheduler.num_waiting == 0


def test_everything_finishes_even_with_a_cache_too_small_for_all() -> None:
    """Preemption by recompute, never a failure: 10 sequences needing 5 blocks each share 12 blocks."""
    rng = random.Random(0)
    blocks = BlockManager(12, BLOCK)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=10, max_batched_tokens=64), blocks)
    seqs = [make_seq([rng.randrange(50) for _ in range(10)], max_tokens=10, at=i) for i in range(10)]
    for seq in seqs:
        scheduler.add(seq)
    for _ in range(1000):
        if not scheduler.has_work():
            break
        advance(scheduler, rng)
    assert all(s.status is Status.FINISHED and s.num_completion == 10 for s in seqs)
    assert scheduler.preemptions > 0
    assert blocks.num_free == 12


def test_preemption_takes_the_newest_of_the_lowest_priority() -> None:
    blocks = BlockManager(6, BLOCK)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=3, max_batched_tokens=64), blocks)
    old, batch, new = make_seq([1] * 8, at=0), make_seq([2] * 8, priority=Priority.BATCH, at=1), make_seq([3] * 8, at=2)
    for seq in (old, batch, new):
        scheduler.add(seq)
    rng = random.Random(0)
    advance(scheduler, rng)  # all three prefill: 2 blocks each, cache full
    advance(scheduler, rng)  # decodes need a third block each: someone must go
    assert batch.preemptions == 1 and old.preemptions == 0 and new.preemptions == 0


def test_interactive_requests_are_admitted_before_batch_ones() -> None:
    blocks = BlockManager(64, BLOCK)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=1, max_batched_tokens=64), blocks)
    batch = make_seq([1, 2, 3], priority=Priority.BATCH, at=0)
    interactive = make_seq([4, 5, 6], priority=Priority.INTERACTIVE, at=1)
    scheduler.add(batch)
    scheduler.add(interactive)
    assert [c.seq for c in scheduler.schedule()] == [interactive]


def test_long_prompts_are_chunked_and_decodes_keep_running() -> None:
    blocks = BlockManager(64, BLOCK)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_batched_tokens=8), blocks)
    short = make_seq([1, 2, 3], at=0)
    scheduler.add(short)
    advance(scheduler, random.Random(0))  # short has prefilled and sampled
    long = make_seq(list(range(40)), at=1)
    scheduler.add(long)
    chunks = scheduler.schedule()
    assert [(c.seq, c.length) for c in chunks] == [(short, 1), (long, 7)]
    assert not chunks[1].samples


def test_a_repeated_prompt_reuses_cached_blocks() -> None:
    blocks = BlockManager(64, BLOCK)
    scheduler = Scheduler(SchedulerConfig(), blocks)
    prompt = list(range(18))  # four full blocks and two tokens
    first = make_seq(prompt, max_tokens=1)
    scheduler.add(first)
    advance(scheduler, random.Random(0))
    assert first.status is Status.FINISHED
    second = make_seq(prompt, max_tokens=1)
    scheduler.add(second)
    [chunk] = scheduler.schedule()
    assert second.num_cached == 16 and chunk.start == 16 and chunk.length == 2
    assert blocks.stats.hit_tokens == 16


def test_with_prefix_caching_off_a_repeated_prompt_is_computed_again() -> None:
    blocks = BlockManager(64, BLOCK, prefix_caching=False)
    scheduler = Scheduler(SchedulerConfig(), blocks)
    prompt = list(range(18))
    for _ in range(2):
        seq = make_seq(prompt, max_tokens=1)
        scheduler.add(seq)
        [chunk] = scheduler.schedule()
        assert seq.num_cached == 0 and chunk.start == 0 and chunk.length == 18
        seq.num_computed += chunk.length
        seq.token_ids.append(0)
        blocks.register(seq)
        scheduler.remove(seq)
    assert blocks.cached == {} and blocks.stats.hit_tokens == 0
    assert blocks.num_free == 64


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    blocks = BlockManager(64, BLOCK)
    scheduler = Scheduler(SchedulerConfig(), blocks)
    prompt = list(range(16))
    for _ in range(2):
        scheduler.add(make_seq(prompt, max_tokens=1))
        chunks = scheduler.schedule()  # the second time, three blocks hit and the last block runs again
        for chunk in chunks:
            chunk.seq.num_computed += chunk.length
            chunk.seq.token_ids.append(0)
            blocks.register(chunk.seq)
            scheduler.remove(chunk.seq)
    assert chunks[0].start == 12 and chunks[0].length == 4


def test_different_adapters_never_share_blocks() -> None:
    blocks = BlockManager(64, BLOCK)
    scheduler = Scheduler(SchedulerConfig(), blocks)
    prompt = list(range(9))
    base = make_seq(prompt, max_tokens=1)
    scheduler.add(base)
    advance(scheduler, random.Random(0))
    tuned = make_seq(prompt, max_tokens=1)
    tuned.adapter = "support-v2"
    scheduler.add(tuned)
    scheduler.schedule()
    assert tuned.num_cached == 0
