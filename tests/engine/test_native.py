"""The native attention kernel computes what the PyTorch path computes, reading the paged cache in place."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from penstock.engine import native
from penstock.engine.model import ModelArgs
from penstock.engine.native import AttentionKernel, QueryRows, load_attention_kernel
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, SeqSlice

ARGS = ModelArgs(
    dim=576,
    n_layers=2,
    n_heads=9,
    n_kv_heads=3,
    hidden_dim=1536,
    vocab_size=100,
    norm_eps=1e-5,
    rope_theta=10000.0,
    max_seq_len=2048,
    tie_embeddings=True,
    head_dim=64,
)
BLOCK = 16


@pytest.fixture(scope="module")
def kernel() -> AttentionKernel:
    built = load_attention_kernel()
    assert built is not None, "this machine has a C compiler: the kernel must build"
    return built


def random_step(rng: random.Random, num_blocks: int) -> list[SeqSlice]:
    """Decodes and prefill chunks of random lengths, on blocks scattered over the cache."""
    free = list(range(num_blocks))
    rng.shuffle(free)
    slices = []
    for i in range(12):
        context = rng.randint(1, 300)
        length = 1 if i % 3 else min(context, rng.randint(2, 40))
        table = [free.pop() for _ in range(-(-context // BLOCK))]
        slices.append(SeqSlice(table, context - length, length))
    return slices


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("head_dim", [64, 48, 40])  # 48, 40: off the wider vector paths
# GQA groups of 3 (SmolLM2), 1, 4 and 2; 9 is off the grouped path
@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(9, 3), (9, 9), (8, 2), (8, 4), (9, 1)])
def test_the_kernel_matches_sdpa_on_a_mixed_step(
    kernel: AttentionKernel, dtype: torch.dtype, tolerance: float, head_dim: int, n_heads: int, n_kv_heads: int
) -> None:
    torch.manual_seed(0)
    args = replace(ARGS, head_dim=head_dim, n_heads=n_heads, n_kv_heads=n_kv_heads)
    cache = PagedKVCache(args, 512, BLOCK, dtype=dtype, device="cpu")
    cache.k.normal_()
    cache.v.normal_()
    slices = random_step(random.Random(1), 512)
    tokens = sum(s.length for s in slices)
    q = torch.randn(1, args.n_heads, tokens, head_dim)
    k, v = (torch.randn(1, args.n_kv_heads, tokens, head_dim) for _ in range(2))
    for layer in range(args.n_layers):
        expected = PagedAttention.build(cache, slices, "cpu").attend(layer, q, k, v)
        native_step = PagedAttention.build(cache, slices, "cpu", kernel)
        assert native_step.queries is not None and len(native_step.queries) == tokens  # chunks' queries too
        assert not native_step.views
        torch.testing.assert_close(native_step.attend(layer, q, k, v), expected, atol=tolerance, rtol=tolerance)


def test_a_single_key_context_is_that_keys_value(kernel: AttentionKernel) -> None:
    cache = PagedKVCache(ARGS, 4, BLOCK, dtype=torch.float32, device="cpu")
    q = torch.randn(1, ARGS.n_heads, 1, ARGS.head_dim)
    k, v = (torch.randn(1, ARGS.n_kv_heads, 1, ARGS.head_dim) for _ in range(2))
    out = PagedAttention.build(cache, [SeqSlice([2], 0, 1)], "cpu", kernel).attend(0, q, k, v)
    group = ARGS.n_heads // ARGS.n_kv_heads
    torch.testing.assert_close(out, v.repeat_interleave(group, dim=1))


def test_without_a_compiler_there_is_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-penstock")
    load_attention_kernel.cache_clear()
    try:
        assert native.load_attention_kernel() is None
    finally:
        monkeypatch.undo()
        load_attention_kernel.cache_clear()


def test_a_chunks_queries_share_its_table_and_each_sees_keys_up_to_its_own() -> None:
    queries = QueryRows.build([([7], 4, 1), ([1, 2], 16, 3)])  # a decode at position 4, a chunk at 16-18
    assert queries.rows.tolist() == [0, 1, 2, 3]
    assert queries.block_tables.tolist() == [7, 1, 2]
    assert queries.table_starts.tolist() == [0, 1, 1, 1]
    assert queries.context_lens.tolist() == [5, 17, 18, 19]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_a_long_chunk_goes_in_tiles_and_each_query_sees_only_the_keys_before_it(
    kernel: AttentionKernel, dtype: torch.dtype, tolerance: float
) -> None:
    """Many tiles, the last one partial, over a context already half cached: causal inside the chunk."""
    torch.manual_seed(2)
    cache = PagedKVCache(ARGS, 64, BLOCK, dtype=dtype, device="cpu")
    cache.k.normal_()
    cache.v.normal_()
    slices = [SeqSlice(list(range(63, 63 - 20, -1)), 97, 203)]  # positions 97-299, blocks in reverse
    q = torch.randn(1, ARGS.n_heads, 203, ARGS.head_dim)
    k, v = (torch.randn(1, ARGS.n_kv_heads, 203, ARGS.head_dim) for _ in range(2))
    expected = PagedAttention.build(cache, slices, "cpu").attend(0, q, k, v)
    got = PagedAttention.build(cache, slices, "cpu", kernel).attend(0, q, k, v)
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
