"""`auto` kernel settings time the candidates on this CPU and keep what they chose consistent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from penstock.engine.kernels.kernel_choice import (
    DENSE_DTYPES,
    KV_DTYPES,
    AttentionChoice,
    choose_attention,
    choose_weight_kernels,
    interleaved_seconds,
    median_seconds,
)
from penstock.engine.kernels.quant import HybridHead, HybridInt4Linear
from penstock.engine.model import ModelArgs, Transformer

TINY = ModelArgs(
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    hidden_dim=128,
    vocab_size=100,
    norm_eps=1e-5,
    rope_theta=10000.0,
    max_seq_len=64,
    tie_embeddings=True,
    head_dim=16,
)


def test_median_seconds_times_the_call() -> None:
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 4  # a warm-up, then the timed repeats


def test_the_attention_choice_is_one_of_the_candidates() -> None:
    choice = choose_attention(TINY, KV_DTYPES, (False, True))
    assert choice.kv_dtype in KV_DTYPES and choice.native in (False, True)


def test_a_single_candidate_is_taken_untimed_and_the_kernel_never_gets_a_dtype_it_lacks() -> None:
    assert choose_attention(TINY, (torch.float16,), (True,)) == AttentionChoice(torch.float16, False)
    assert choose_attention(TINY, (torch.float32,), (True,)) == AttentionChoice(torch.float32, True)


def test_the_weight_choice_swaps_all_or_nothing_and_applies_what_it_measured() -> None:
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    tokens, positions = torch.tensor([[5, 6, 7]]), torch.arange(3)
    with torch.inference_mode():
        before = model(tokens, positions)
        choice = choose_weight_kernels(model, DENSE_DTYPES)
        after = model(tokens, positions)
    int4 = [m for m in model.modules() if isinstance(m, HybridInt4Linear)]
    int8 = [m for m in model.modules() if isinstance(m, HybridHead)]
    # Per block: wqkv, wo, w13, w2; and the head.
    assert (len(int4), len(int8)) == ((4 * TINY.n_layers, 1) if choice.swapped else (0, 0))
    assert isinstance(model.output, HybridHead if choice.swapped else nn.Linear)
    assert choice.dense_dtype in (torch.float32, torch.bfloat16)
    assert set(choice.few_rows) == {"128x64", "64x64", "256x64", "64x128", "100x64"}  # out x in, one per shape
    for layer in [*int4, *int8]:
        assert layer.dense_dtype == choice.dense_dtype
        assert layer.few_rows == choice.few_rows["x".join(map(str, layer.weight.shape))]
    # Random weights are not on a 4-bit grid, so int4 moves single logits; the logits as a whole hold.
    assert F.cosine_similarity(after.flatten(), before.flatten(), dim=0) > 0.99


def test_interleaved_timing_times_both_calls_alike() -> None:
    calls: list[str] = []
    a_s, b_s = interleaved_seconds(lambda: calls.append("a"), lambda: calls.append("b"), repeats=3)
    assert calls == ["a", "b"] * 4 and a_s >= 0 and b_s >= 0  # a warm-up each, then turn about
