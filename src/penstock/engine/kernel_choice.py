"""Kernels chosen by timing them on the CPU at hand, on the engine's own thread, at load.

Which kernel wins depends on the CPU more than on the model. On one 2-core machine int4 decode ran
twice as fast as fp32 and a bf16 KV cache halved attention's cost; on an AVX2-only EPYC the bf16
SDPA kernel ran 3-5x slower than fp32 and int4 gained far less, while the native decode kernel ran
2.4x faster than SDPA there. So `auto` settings measure here instead of assuming, and log what they
measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace

import structlog
import torch
import torch.nn.functional as F
from torch import nn

from penstock.engine.model import ModelArgs
from penstock.engine.native import FUNCTIONS, DecodeKernel, load_decode_kernel
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, SeqSlice
from penstock.engine.quant import Swap, apply_swaps, hybrid_swaps

log = structlog.get_logger("penstock.engine")
KV_DTYPES = (torch.float32, torch.bfloat16)
PROBE_CONTEXT = 512  # keys per sequence in the attention probe: a mid-length chat
PROBE_SEQS = 16  # decodes in the probe's step: a busy server's batch
PROBE_BLOCK = 16


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


@dataclass(frozen=True, slots=True)
class AttentionChoice:
    kv_dtype: torch.dtype
    native: bool  # decodes through the native kernel (native.py) rather than per-sequence SDPA


def choose_attention(args: ModelArgs, kv_dtypes: Seq[torch.dtype], natives: Seq[bool]) -> AttentionChoice:
    """The fastest KV cache dtype and decode path for a batch of decodes (PROBE_SEQS of PROBE_CONTEXT keys each)."""
    # The kernel serves fp32 and bf16 caches; for any other dtype its candidate becomes SDPA's.
    candidates = list(dict.fromkeys(AttentionChoice(d, n and d in FUNCTIONS) for d in kv_dtypes for n in natives))
    if len(candidates) == 1:
        return candidates[0]
    kernel = load_decode_kernel() if any(natives) else None
    timings = {c: _decode_seconds(args, c.kv_dtype, kernel if c.native else None) for c in candidates}
    best = min(timings, key=timings.__getitem__)
    log.info(
        "kernel_choice",
        kind="decode_attention",
        **{_label(c): round(s * 1e3, 2) for c, s in timings.items()},
        chosen=_label(best).removesuffix("_ms"),
    )
    return best


def _label(choice: AttentionChoice) -> str:
    return f"{'native' if choice.native else 'sdpa'}_{str(choice.kv_dtype).removeprefix('torch.')}_ms"


def _decode_seconds(args: ModelArgs, dtype: torch.dtype, kernel: DecodeKernel | None) -> float:
    """One decode step's attention, every layer, for PROBE_SEQS sequences of PROBE_CONTEXT keys."""
    blocks_per_seq = -(-PROBE_CONTEXT // PROBE_BLOCK)
    cache = PagedKVCache(replace(args, n_layers=1), PROBE_SEQS * blocks_per_seq, PROBE_BLOCK, dtype=dtype, device="cpu")
    cache.k.normal_()
    cache.v.normal_()
    tables = [range(i * blocks_per_seq, (i + 1) * blocks_per_seq) for i in range(PROBE_SEQS)]
    step = PagedAttention.build(cache, [SeqSlice(t, PROBE_CONTEXT - 1, 1) for t in tables], "cpu", kernel)
    q = torch.randn(1, args.n_heads, PROBE_SEQS, args.head_dim)
    k, v = (torch.randn(1, args.n_kv_heads, PROBE_SEQS, args.head_dim) for _ in range(2))
    with torch.inference_mode():
        return median_seconds(lambda: [step.attend(0, q, k, v) for _ in range(args.n_layers)])


def _layers(swaps: list[Swap]) -> list[nn.Module]:
    return [replacement for _, _, replacement in swaps]
