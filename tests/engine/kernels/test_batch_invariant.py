"""The batch-invariant kernels: each row's numbers are the same whatever rows share its call, the
weights are the file's exact numbers, and the whole forward stays within rounding of the fp32 model."""

from __future__ import annotations

import pytest
import torch

from penstock.engine.kernels.batch_invariant import BatchInvariantForward, PackedWeight
from penstock.engine.loader import LoadedModel
from penstock.engine.paged_attention import PagedKVCache, SeqSlice, StepInput

TEXT = "The capital of France is Paris, and the capital of Germany is Berlin. The capital of Italy is"


@pytest.fixture(scope="module")
def invariant(loaded: LoadedModel) -> BatchInvariantForward:
    built = BatchInvariantForward.build(loaded)
    assert built is not None  # fp32 on the CPU with a C compiler, as here
    return built


def test_packed_weights_are_the_models_own_numbers(loaded: LoadedModel, invariant: BatchInvariantForward) -> None:
    block = loaded.model.layers[0]
    model_weights = [block.attention.wqkv, block.attention.wo, block.feed_forward.w13, block.feed_forward.w2]
    for packed, linear in zip(invariant.weights[:4], model_weights, strict=True):
        assert packed.struct.format == 1  # Q4_1 in the file: multiplied from its grid
        assert torch.equal(packed.unpack(), linear.weight)
    assert invariant.head.struct.format == 2 and torch.equal(invariant.head.unpack(), loaded.model.output.weight)
    odd = torch.randn(37, 48)  # no grid, and outputs that do not fill the last tile: fp32 tiles, padded
    assert torch.equal(PackedWeight.pack(odd).unpack(), odd)


@pytest.mark.parametrize("index", [0, 2, 3])  # wqkv, w13, w2: 576, 576 and 1536 inputs
def test_each_rows_output_is_the_same_whatever_rows_share_the_call(
    invariant: BatchInvariantForward, index: int
) -> None:
    weight = invariant.weights[index]
    x = torch.randn(70, weight.struct.k, generator=torch.Generator().manual_seed(index))
    alone = torch.cat([invariant.linear(weight, x[i : i + 1].contiguous()) for i in range(len(x))])
    for rows in (2, 5, 7, 8, 13, 70):  # the few-row kernels, the panel from 8 rows, 6-row tiles and tails
        together = torch.cat([invariant.linear(weight, x[i : i + rows].contiguous()) for i in range(0, 70, rows)])
        assert torch.equal(together, alone), rows
    torch.testing.assert_close(alone, x @ weight.unpack().T, rtol=1e-4, atol=1e-4)


def forward(
    invariant: BatchInvariantForward, cache: PagedKVCache, ids: list[int], slices: list[SeqSlice]
) -> torch.Tensor:
    """Logits at every token of the step."""
    return invariant(StepInput(ids, slices, torch.arange(len(ids))), cache)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_a_token_gets_the_same_logits_chunked_crowded_or_after_a_cache_hit(
    loaded: LoadedModel, invariant: BatchInvariantForward, kv_dtype: torch.dtype
) -> None:
    ids = loaded.tokenizer.encode(TEXT)
    n = len(ids)
    cache = PagedKVCache(loaded.args, 64, 16, dtype=kv_dtype, device="cpu")
    whole = forward(invariant, cache, ids, [SeqSlice(range(0, 8), 0, n)])
    chunked = torch.cat(
        [forward(invariant, cache, ids[s : s + 5], [SeqSlice(range(8, 16), s, min(5, n - s))]) for s in range(0, n, 5)]
    )
    assert torch.equal(chunked, whole)
    other = loaded.tokenizer.encode("Once upon a time in a land far away there lived")
    crowd = forward(
        invariant, cache, other + ids, [SeqSlice(range(16, 24), 0, len(other)), SeqSlice(range(24, 32), 0, n)]
    )
    assert torch.equal(crowd[len(other) :], whole)
    # The last 3 tokens again, their context read from the blocks the whole prompt filled (a prefix hit).
    tail = forward(invariant, cache, ids[n - 3 :], [SeqSlice(range(0, 8), n - 3, 3)])
    assert torch.equal(tail, whole[n - 3 :])
    if kv_dtype == torch.float32:  # the exact weights, fp32 throughout: within rounding of the model
        with torch.inference_mode():
            reference = loaded.model(torch.tensor([ids]), torch.arange(n))[0]
        torch.testing.assert_close(whole, reference, rtol=0, atol=1e-3)
        assert torch.equal(whole.argmax(-1), reference.argmax(-1))
