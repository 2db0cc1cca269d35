from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from penstock.engine.gguf_loader import has_4bit_layers
from penstock.engine.kernels.native import load_int4_matmul, load_int8_matmul
from penstock.engine.kernels.quant import (
    FEW_ROWS,
    GROUP,
    RESCORED,
    HybridHead,
    HybridInt4Linear,
    dense_copy,
    dense_linear,
    int4_grid,
    pack_int4,
    pack_int4_bf16,
    pack_int8_tiles,
    quantize_layers,
)
from penstock.engine.llm_engine import EngineConfig, LLMEngine
from penstock.engine.loader import load_chat_model
from penstock.engine.sampler import request_rng
from penstock.engine.scheduler import SchedulerConfig
from penstock.engine.sequence import Sequence
from penstock.types import SamplingParams, TokenEvent


def four_bit_linear(out_features: int = 64, in_features: int = 128) -> nn.Linear:
    """A linear layer whose weights lie on a Q4_1-style grid: per group of 32, q·scale + min, q in 0..15."""
    gen = torch.Generator().manual_seed(0)
    groups = in_features // GROUP
    q = torch.randint(0, 16, (out_features, groups, GROUP), generator=gen).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans the whole grid, as requantisation assumes
    scale = torch.rand(out_features, groups, 1, generator=gen) * 0.02 + 0.001
    low = torch.randn(out_features, groups, 1, generator=gen) * 0.05
    linear = nn.Linear(in_features, out_features, bias=False)
    linear.weight.data = (q * scale + low).view(out_features, in_features)
    return linear


def test_few_rows_use_int4_and_match_fp32_to_bf16_precision() -> None:
    linear = four_bit_linear()
    hybrid = HybridInt4Linear(linear)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    expected = linear(x)
    got = hybrid(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=0.02, atol=0.02)
    assert not torch.equal(got, expected)  # it really took the int4 path


def cpu_flags() -> set[str]:
    return set(
        next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    )


def cpu_has_avx512_bf16() -> bool:
    return {"avx512_bf16", "avx512bw"} <= cpu_flags()


def test_few_rows_take_the_native_kernel_exactly_where_the_cpu_has_avx512_bf16() -> None:
    hybrid = HybridInt4Linear(four_bit_linear())
    assert (load_int4_matmul() is not None) == cpu_has_avx512_bf16()
    assert (hybrid.native is not None) == cpu_has_avx512_bf16()


def test_the_native_layout_holds_the_int4_grid() -> None:
    weight = four_bit_linear(32, 64).weight.detach()
    q, scale, low = int4_grid(weight)
    packed, scales, lows = pack_int4_bf16(weight)
    assert packed.shape == (2, 16, 16, 2) and scales.shape == lows.shape == (2, 2, 16)
    for tile, c, i, j in [(0, 0, 0, 0), (1, 3, 5, 1), (1, 15, 15, 1), (0, 9, 9, 0)]:
        byte = int(packed[tile, c, i, j])
        assert byte & 0x0F == q[16 * tile + i, 4 * c + j]
        assert byte >> 4 == q[16 * tile + i, 4 * c + 2 + j]
    assert torch.equal(scales[1, :, 3], scale[19].half()) and torch.equal(lows[0, :, 7], low[7].half())


def test_the_native_kernel_computes_what_pytorchs_int4_kernel_computes() -> None:
    """bf16 in and out, fp32 sums of exact products over its fp16 scales, and at least as near the exact
    dequantized weights as PyTorch's kernel with its bf16 scales."""
    kernel = load_int4_matmul()
    if kernel is None:
        assert not cpu_has_avx512_bf16()  # PyTorch's kernel serves this CPU (the test above)
        return
    weight = four_bit_linear(96, 256).weight.detach()
    q, scale, low = int4_grid(weight)

    def dequantized(scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return (q.view(96, -1, GROUP) * scale[..., None] + low[..., None]).view(96, 256)

    exact, as_stored = dequantized(scale, low), dequantized(scale.half().float(), low.half().float())
    pytorch_int4 = pack_int4(weight)
    for rows in (1, 2, 3, 4, 5, 9):  # the kernel's tiles take 1-4 rows at a time
        x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).bfloat16()
        got = kernel(x, *pack_int4_bf16(weight))
        assert got.dtype == torch.bfloat16 and got.shape == (rows, 96)
        torch.testing.assert_close(got.float(), (x.float() @ as_stored.T).bfloat16().float(), rtol=2**-7, atol=1e-5)
        pytorchs = torch.ops.aten._weight_int4pack_mm_for_cpu(x, pytorch_int4[0], GROUP, pytorch_int4[1]).float()
        expected = x.float() @ exact.T
        assert (got.float() - expected).abs().mean() <= (pytorchs - expected).abs().mean()


def test_the_native_int8_kernel_is_the_int8_weights_times_their_scales_in_fp32() -> None:
    kernel = load_int8_matmul()
    head = HybridHead(four_bit_linear(64, 128))
    assert (kernel is not None) == ("avx512f" in cpu_flags()) == (head.native is not None)
    if kernel is None:
        return  # PyTorch's int8 kernel serves this CPU
    gen = torch.Generator().manual_seed(5)
    int8 = torch.randint(-127, 128, (96, 256), generator=gen, dtype=torch.int8)
    scales = torch.rand(96, generator=gen) * 0.01
    tiles = pack_int8_tiles(int8)
    assert torch.equal(tiles[2, 7], int8[32:48, 7])
    for rows in (1, 2, 3, 4, 5, 9):  # the kernel's tiles take 1-4 rows at a time
        x = torch.randn(rows, 256, generator=gen)
        got = kernel(x, tiles, scales)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, x @ (int8.float() * scales[:, None]).T, rtol=1e-5, atol=1e-5)


def test_many_rows_use_the_exact_fp32_weights() -> None:
    linear = four_bit_linear()
    x = torch.randn(FEW_ROWS, 128, generator=torch.Generator().manual_seed(2))
    assert torch.equal(HybridInt4Linear(linear)(x), linear(x))


def test_the_crossover_and_a_bf16_dense_copy_route_each_call() -> None:
    linear = four_bit_linear()
    hybrid = HybridInt4Linear(linear)
    hybrid.few_rows = 4
    hybrid.use_dense(torch.bfloat16)
    gen = torch.Generator().manual_seed(4)
    few, many = torch.randn(3, 128, generator=gen), torch.randn(4, 128, generator=gen)
    assert torch.equal(hybrid(few), hybrid.few_row_forward(few).float())  # under the crossover: int4
    dense = hybrid(many)
    assert dense.dtype == torch.float32 and torch.equal(
        dense, F.linear(many.bfloat16(), linear.weight.bfloat16()).float()
    )
    assert torch.allclose(dense, linear(many), rtol=0.02, atol=0.02)
    hybrid.use_dense(torch.float32)  # back to the exact fp32 weight, no copy kept
    assert hybrid.dense is None and torch.equal(hybrid(many), linear(many))


def test_a_bf16_dense_copy_is_blocked_once_for_onednn_and_gives_the_same_bits() -> None:
    weight = four_bit_linear(96, 128).weight.detach()
    packed = dense_copy(weight, torch.bfloat16)
    # oneDNN blocks a bf16 weight only on CPUs with native bf16 support (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)
    blocks = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert packed.is_mkldnn == blocks
    assert not dense_copy(weight, torch.float32).is_mkldnn  # fp32 keeps the plain weight's layout
    gen = torch.Generator().manual_seed(5)
    for shape in ((7, 128), (2, 5, 128), (1, 1, 128), (0, 128)):
        x = torch.randn(shape, generator=gen).bfloat16()
        got = dense_linear(x, packed)
        assert got.shape == (*shape[:-1], 96) and torch.equal(got, F.linear(x, weight.bfloat16()))


def test_head_rescores_its_best_candidates_exactly_and_is_exact_on_many_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    head = nn.Linear(128, 1000, bias=False)
    head.weight.data = torch.randn(1000, 128, generator=gen) * 0.05
    hybrid = HybridHead(head)
    assert hybrid.weight is head.weight  # shared, as a tied embedding stays shared
    x = torch.randn(2, 128, generator=gen)
    got, exact = hybrid(x), head(x)
    approximate = hybrid.few_row_forward(x).float()
    assert not torch.equal(approximate, exact)  # int8 and a bf16 output: not exact
    top = approximate.topk(RESCORED, dim=-1).indices
    assert torch.allclose(got.gather(-1, top), exact.gather(-1, top), rtol=1e-6, atol=1e-6)
    rest = torch.ones_like(got, dtype=torch.bool).scatter(-1, top, False)
    assert torch.equal(got[rest], approximate[rest])  # the tail keeps the fast path's logits
    assert torch.equal(got.argmax(-1), exact.argmax(-1))
    many = torch.randn(FEW_ROWS, 128, generator=gen)
    assert torch.equal(hybrid(many), head(many))
    hybrid.use_dense(torch.bfloat16)  # many rows through bf16: their best candidates rescored too
    dense = hybrid(many)
    top = F.linear(many.bfloat16(), head.weight.bfloat16()).float().topk(RESCORED, dim=-1).indices
    assert torch.allclose(dense.gather(-1, top), head(many).gather(-1, top), rtol=1e-6, atol=1e-6)


def test_no_rows_give_no_rows() -> None:
    """A step whose chunks sample nothing asks the head for logits of zero rows."""
    head = nn.Linear(128, 50, bias=False)
    assert HybridHead(head)(torch.empty(1, 0, 128)).shape == (1, 0, 50)
    assert HybridInt4Linear(four_bit_linear())(torch.empty(0, 128)).shape == (0, 64)


def test_quantize_layers_swaps_block_linears_for_int4_and_the_head_for_a_hybrid_head() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Module()
            self.attention.wq = four_bit_linear(64, 64)
            self.feed_forward = nn.Module()
            self.feed_forward.w1 = four_bit_linear(64, 64)
            self.feed_forward.odd = nn.Linear(33, 8)  # not a multiple of the group: stays fp32

    model = nn.Module()
    model.layers = nn.ModuleList([Block()])
    model.output = nn.Linear(64, 10)
    assert quantize_layers(model) == 3
    assert isinstance(model.layers[0].attention.wq, HybridInt4Linear)
    assert isinstance(model.layers[0].feed_forward.odd, nn.Linear)
    assert isinstance(model.output, HybridHead)


def test_the_shipped_gguf_is_4bit(gguf_path: Path) -> None:
    assert has_4bit_layers(gguf_path)


def test_a_quantized_engine_serves_a_prompt_prefilled_in_chunks(gguf_path: Path) -> None:
    """Chunks before a prompt's last sample nothing: the quantized head must take zero rows."""
    loaded = load_chat_model(gguf_path, quantize="on")
    scheduler = SchedulerConfig(max_num_seqs=4, max_batched_tokens=32)
    config = EngineConfig(block_size=16, kv_cache_tokens=512, determinism="fast", scheduler=scheduler)
    engine = LLMEngine(loaded, config)
    events: list[object] = []
    params = SamplingParams(max_tokens=4, temperature=0.0)
    engine.add(Sequence(list(range(100, 200)), params, max_tokens=4, rng=request_rng(None, "cpu")), events.append)
    while engine.has_work():
        engine.step()
    assert not [e for e in events if isinstance(e, Exception)]
    assert sum(len(e.token_ids) for e in events if isinstance(e, TokenEvent)) == 4
