"""The native kernels compute what the PyTorch path computes: attention reading the paged cache in place, and
the steps between a layer's int4 matmuls."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from penstock.engine.kernels import native
from penstock.engine.kernels.native import AttentionKernel, QueryRows, load_attention_kernel
from penstock.engine.model import ModelArgs, apply_rope, rope_tables
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(9, 3), (9, 9), (8, 2), (9, 1)])
def test_a_lone_decode_split_over_its_kv_heads_matches_sdpa(
    kernel: AttentionKernel, dtype: torch.dtype, n_heads: int, n_kv_heads: int
) -> None:
    """One sequence, fewer tiles than threads: each KV head's group is a work item of its own."""
    torch.manual_seed(0)
    args = replace(ARGS, n_heads=n_heads, n_kv_heads=n_kv_heads)
    cache = PagedKVCache(args, 64, BLOCK, dtype=dtype, device="cpu")
    cache.k.normal_()
    cache.v.normal_()
    slices = [SeqSlice(list(range(40, 20, -1)), 299, 1)]  # 300 keys on blocks in reverse order
    q = torch.randn(1, n_heads, 1, args.head_dim)
    k, v = (torch.randn(1, n_kv_heads, 1, args.head_dim) for _ in range(2))
    expected = PagedAttention.build(cache, slices, "cpu").attend(0, q, k, v)
    got = PagedAttention.build(cache, slices, "cpu", kernel).attend(0, q, k, v)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_a_single_key_context_is_that_keys_value(kernel: AttentionKernel) -> None:
    cache = PagedKVCache(ARGS, 4, BLOCK, dtype=torch.float32, device="cpu")
    q = torch.randn(1, ARGS.n_heads, 1, ARGS.head_dim)
    k, v = (torch.randn(1, ARGS.n_kv_heads, 1, ARGS.head_dim) for _ in range(2))
    out = PagedAttention.build(cache, [SeqSlice([2], 0, 1)], "cpu", kernel).attend(0, q, k, v)
    group = ARGS.n_heads // ARGS.n_kv_heads
    torch.testing.assert_close(out, v.repeat_interleave(group, dim=1))


def test_without_a_compiler_there_are_no_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-penstock")
    native._library.cache_clear()
    try:
        assert native.load_attention_kernel() is None
        assert native.load_layer_steps() is None
        assert native.load_int4_matmul() is None and native.load_int8_matmul() is None
    finally:
        monkeypatch.undo()
        native._library.cache_clear()


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


# --- The steps between a layer's int4 matmuls (csrc/decode_layer.c) ------------------------------


@pytest.fixture(scope="module")
def steps() -> native.LayerSteps:
    built = native.load_layer_steps()
    assert built is not None, "this machine has a C compiler: the library must build"
    return built


def as_bf16_within_one_step(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """`actual` (bf16) is `expected` (fp32) rounded to bf16, give or take one bf16 step (an fp32 ulp apart
    before rounding can round either way)."""
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected.to(torch.bfloat16).float(), rtol=2**-7, atol=1e-30)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_adds_the_delta_into_the_stream_and_normalises_it(
    steps: native.LayerSteps, out_dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(5, ARGS.dim) * 3, torch.randn(ARGS.dim)
    delta = torch.randn(5, ARGS.dim).to(torch.bfloat16)
    expected_x = x + delta.float()
    expected = torch.nn.functional.rms_norm(expected_x, (ARGS.dim,), weight, ARGS.norm_eps)
    out = torch.empty(5, ARGS.dim, dtype=out_dtype)
    steps.add_rms_norm(x, delta, weight, ARGS.norm_eps, out)
    assert torch.equal(x, expected_x)
    if out_dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    else:
        as_bf16_within_one_step(out, expected)
    steps.add_rms_norm(x, None, weight, ARGS.norm_eps, out)  # no delta: the first layer's norm
    assert torch.equal(x, expected_x)


def test_silu_mul_is_silu_of_the_gate_times_up_even_where_the_gate_is_extreme(steps: native.LayerSteps) -> None:
    torch.manual_seed(0)
    gate_up = (torch.randn(3, 2 * ARGS.hidden_dim) * 4).to(torch.bfloat16)
    gate_up[0, :4] = torch.tensor([-200.0, -90.0, 90.0, 200.0])  # e^-g overflows fp32 at the first two
    gate, up = gate_up.float().chunk(2, dim=-1)
    out = torch.empty(3, ARGS.hidden_dim, dtype=torch.bfloat16)
    steps.silu_mul(gate_up, out)
    assert torch.isfinite(out.float()).all()
    as_bf16_within_one_step(out, torch.nn.functional.silu(gate) * up)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 40])
def test_rope_attend_rotates_writes_the_cache_and_attends_as_the_pytorch_path(
    kernel: AttentionKernel, steps: native.LayerSteps, dtype: torch.dtype, head_dim: int
) -> None:
    torch.manual_seed(0)
    args = replace(ARGS, head_dim=head_dim)
    slices = random_step(random.Random(2), 512)
    tokens = sum(s.length for s in slices)
    qkv = torch.randn(tokens, (args.n_heads + 2 * args.n_kv_heads) * head_dim).to(torch.bfloat16)
    positions = torch.cat([torch.arange(s.start, s.start + s.length) for s in slices])
    cos, sin = rope_tables(positions, head_dim, args.rope_theta, torch.float32)
    ours, theirs = (PagedKVCache(args, 512, BLOCK, dtype=dtype, device="cpu") for _ in range(2))
    for cache in (ours, theirs):
        cache.k.copy_(torch.randn_like(cache.k, dtype=torch.float32, generator=torch.Generator().manual_seed(3)))
        cache.v.copy_(torch.randn_like(cache.v, dtype=torch.float32, generator=torch.Generator().manual_seed(4)))

    heads = qkv.float().view(1, tokens, -1, head_dim).transpose(1, 2)
    qk, v = heads.split((args.n_heads + args.n_kv_heads, args.n_kv_heads), dim=1)
    q, k = apply_rope(qk, cos, sin).split((args.n_heads, args.n_kv_heads), dim=1)
    expected = PagedAttention.build(theirs, slices, "cpu", kernel).attend(1, q, k, v)
    expected = expected[0].transpose(0, 1).reshape(tokens, -1)

    step = PagedAttention.build(ours, slices, "cpu", kernel)
    assert step.queries is not None
    out = torch.empty(tokens, args.n_heads * head_dim, dtype=torch.bfloat16)
    steps.rope_attend(qkv, cos, sin, ours.k[1], ours.v[1], step.slot_mapping, step.queries, out)

    exact = dtype == torch.float32
    torch.testing.assert_close(ours.k, theirs.k, rtol=1e-5 if exact else 2**-7, atol=1e-5)
    assert torch.equal(ours.v, theirs.v)  # values are copied, not computed
    torch.testing.assert_close(out.float(), expected, rtol=2**-7, atol=1e-2 if exact else 2e-2)
