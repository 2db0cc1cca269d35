"""Kernels chosen by timing them on the CPU at hand, on the engine's own thread, at load.

Which kernel wins depends on the CPU more than on the model. On one 2-core machine int4 decode ran
twice as fast as fp32 and a bf16 KV cache halved attention's cost; on an AVX2-only EPYC the bf16
attention kernel ran 3-5x slower than fp32 and int4 gained far less. So `auto` settings measure
here instead of assuming, and log what they measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import structlog
import torch
import torch.nn.functional as F
from torch import nn

from penstock.engine.model import ModelArgs
from penstock.engine.quant import Swap, apply_swaps, hybrid_swaps

log = structlog.get_logger("penstock.engine")
KV_DTYPES = (torch.float32, torch.bfloat16)
PROBE_CONTEXT = 512  # keys per sequence in the attention probe: a mid-length chat


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantize_if_faster(model: nn.Module) -> bool:
    """Swap in the hybrid quantized layers where one decode row through all of them beats fp32."""
    swaps = hybrid_swaps(model)
    rows = {layer.weight.shape[1]: torch.randn(1, layer.weight.shape[1]) for _, _, layer in swaps}
    with torch.inference_mode():
        fp32_s = median_seconds(lambda: [F.linear(rows[m.weight.shape[1]], m.weight) for m in _layers(swaps)])
        quantized_s = median_seconds(lambda: [m(rows[m.weight.shape[1]]) for m in _layers(swaps)])
    wins = quantized_s < fp32_s
    log.info("kernel_choice", kind="decode_weights", fp32_ms=fp32_s * 1e3, quantized_ms=quantized_s * 1e3, wins=wins)
    if wins:
        apply_swaps(swaps)
    return wins


def fastest_kv_dtype(args: ModelArgs) -> torch.dtype:
    """The KV cache dtype whose decode attention (one query over PROBE_CONTEXT keys, every layer) is fastest."""
    timings = {dtype: _attention_seconds(args, dtype) for dtype in KV_DTYPES}
    best = min(timings, key=timings.__getitem__)
    log.info(
        "kernel_choice",
        kind="kv_cache_dtype",
        **{f"{str(dtype).removeprefix('torch.')}_ms": s * 1e3 for dtype, s in timings.items()},
        chosen=str(best).removeprefix("torch."),
    )
    return best


def _layers(swaps: list[Swap]) -> list[nn.Module]:
    return [replacement for _, _, replacement in swaps]


def _attention_seconds(args: ModelArgs, dtype: torch.dtype) -> float:
    q = torch.randn(1, args.n_heads, 1, args.head_dim, dtype=dtype)
    k = torch.randn(1, args.n_kv_heads, PROBE_CONTEXT, args.head_dim, dtype=dtype)
    gqa = args.n_heads != args.n_kv_heads
    with torch.inference_mode():
        return median_seconds(
            lambda: [F.scaled_dot_product_attention(q, k, k, enable_gqa=gqa) for _ in range(args.n_layers)]
        )
