"""Few-row steps of the int4 model through the native layer steps give the PyTorch path's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from penstock.engine.kernels.fused_decode import FusedDecode
from penstock.engine.kernels.native import load_attention_kernel, load_layer_steps
from penstock.engine.kernels.paged_forward import PagedForward
from penstock.engine.llm_engine import EngineConfig, LLMEngine
from penstock.engine.loader import LoadedModel, load_chat_model
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, SeqSlice
from penstock.engine.sampler import request_rng
from penstock.engine.sequence import Sequence
from penstock.types import SamplingParams, TokenEvent

BLOCK = 16
TEXT = (
    "The lighthouse keeper climbed the spiral stairs at dusk, trimmed the wick, and watched the beam sweep"
    " across the dark water where the fishing boats were coming home. Every evening for forty years he had"
    " written the weather, the ships that passed and the hour the lamp was lit in a leather-bound log."
)


@pytest.fixture(scope="module")
def quantized(gguf_path: Path) -> LoadedModel:
    return load_chat_model(gguf_path, quantize="on")  # int4 below 16 rows in every layer


@pytest.fixture(scope="module")
def fused(quantized: LoadedModel) -> FusedDecode:
    built = FusedDecode.build(quantized.model, load_layer_steps())
    assert built is not None, "an int4 model on a machine with a C compiler: the fused path must apply"
    return built


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_a_mixed_few_row_step_gives_the_pytorch_paths_logits(
    quantized: LoadedModel, fused: FusedDecode, kv_dtype: torch.dtype
) -> None:
    """Three decodes and a 5-token prefill chunk, over contexts the model itself wrote, at different positions."""
    kernel = load_attention_kernel()
    tokens = quantized.tokenizer.encode(TEXT)
    cache = PagedKVCache(quantized.args, 64, BLOCK, dtype=kv_dtype, device="cpu")
    lengths, tables = (33, 17, 40, 23), ([0, 1, 2], [3, 4], [5, 6, 7], [8, 9])
    with torch.inference_mode():
        for length, table in zip(lengths, tables, strict=True):  # each context prefilled by the model alone
            context = PagedAttention.build(cache, [SeqSlice(table, 0, length)], "cpu", kernel)
            quantized.model(
                torch.tensor([tokens[:length]]), torch.arange(length), context, logits_at=torch.tensor([length - 1])
            )
        chunks = [(0, 1), (1, 1), (2, 1), (3, 5)]  # (sequence, tokens in this step)
        step = [tokens[lengths[s] : lengths[s] + n] for s, n in chunks]
        slices = [SeqSlice(tables[s], lengths[s], n) for s, n in chunks]
        ids = torch.tensor([[t for part in step for t in part]])
        positions = torch.cat([torch.arange(lengths[s], lengths[s] + n) for s, n in chunks])
        sampled = torch.tensor([0, 1, 2, 7])
        saved = cache.k.clone(), cache.v.clone()
        context = PagedAttention.build(cache, slices, "cpu", kernel)
        assert fused.applies(ids.shape[1], context)
        expected = quantized.model(ids, positions, context, logits_at=sampled)
        cache.k.copy_(saved[0]), cache.v.copy_(saved[1])
        actual = fused.forward(ids, positions, PagedAttention.build(cache, slices, "cpu", kernel), sampled)
    assert actual.shape == expected.shape == (1, 4, quantized.args.vocab_size)
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))
    # Both round activations to bf16 at every matmul, in different summation orders (norms, RoPE, SiLU), so
    # values round a step apart here and there and 30 layers carry it on: scaling the embeddings by
    # 1 + 2^-20 moves the PyTorch path's own logits by up to 4e-4 in KL, a bf16 KV cache by up to 9e-4.
    kl = torch.nn.functional.kl_div(actual.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="none")
    assert (kl.sum(-1) < 2e-3).all()


def test_all_layers_in_one_native_call_give_the_layer_by_layer_bits(quantized: LoadedModel, fused: FusedDecode) -> None:
    """Where the int4 matmuls are native, decode_layers runs the same calls in C, in the same order."""
    if fused.weights is None:
        assert not any(layer.wqkv.native for layer in fused.layers)  # PyTorch's int4 kernel: layer by layer only
        return
    kernel = load_attention_kernel()
    tokens = quantized.tokenizer.encode(TEXT)[:20]
    native_weights, logits = fused.weights, []
    try:
        for weights in (native_weights, None):
            cache = PagedKVCache(quantized.args, 8, BLOCK, dtype=torch.bfloat16, device="cpu")
            fused.weights = weights
            with torch.inference_mode():
                for start, length in ((0, 12), (12, 1), (13, 7)):  # chunks and a decode, all through this path
                    context = PagedAttention.build(cache, [SeqSlice([3, 5], start, length)], "cpu", kernel)
                    ids = torch.tensor([tokens[start : start + length]])
                    out = fused.forward(ids, torch.arange(start, start + length), context, torch.tensor([length - 1]))
                logits.append(out)
    finally:
        fused.weights = native_weights
    assert torch.equal(logits[0], logits[1])


def test_the_engine_takes_the_fused_path_for_few_rows_only(quantized: LoadedModel, fused: FusedDecode) -> None:
    config = EngineConfig(block_size=BLOCK, kv_cache_tokens=512, determinism="fast", native_attention=True)
    engine = LLMEngine(quantized, config)
    path = engine.runner.forward
    assert isinstance(path, PagedForward) and path.fused is not None and path.fused.max_rows == 16
    calls: list[int] = []
    forward = path.fused.forward
    path.fused.forward = lambda ids, *rest: calls.append(ids.shape[1]) or forward(ids, *rest)  # type: ignore[method-assign]
    events: list[TokenEvent | Exception] = []
    prompt = quantized.tokenizer.encode(TEXT)  # over 16 tokens: prefilled by Transformer.forward
    params = SamplingParams(max_tokens=6, temperature=0.0)
    engine.add(Sequence(prompt, params, max_tokens=6, rng=request_rng(None, "cpu")), events.append)
    while engine.has_work():
        engine.step()
    assert not [e for e in events if isinstance(e, Exception)]
    assert sum(len(e.token_ids) for e in events if isinstance(e, TokenEvent)) == 6
    assert calls == [1] * 5  # the first token came from the prefill, the other five from fused decodes


def test_there_is_no_fused_path_without_int4_layers_or_native_steps(quantized: LoadedModel, gguf_path: Path) -> None:
    assert FusedDecode.build(quantized.model, None) is None
    plain = load_chat_model(gguf_path)
    assert FusedDecode.build(plain.model, load_layer_steps()) is None
