"""Kernels chosen by timing them on the CPU at hand, on the engine's own thread, at load.

Which kernel wins depends on the CPU more than on the model. On one 2-core machine int4 decode ran
twice as fast as fp32 and a bf16 KV cache halved attention's cost; on an AVX2-only EPYC the bf16
SDPA kernel ran 3-5x slower than fp32 and int4 gained far less, while the native decode kernel ran
2.4x faster than SDPA there; on a Zen 5 EPYC with AVX-512 BF16 a bf16 GEMM ran 3-4x faster than
fp32 from 16 rows up and int4 won only below about 8 rows. So `auto` settings measure here instead
of assuming, and log what they measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace
from typing import Any

import structlog
import torch
from torch import nn

from penstock.engine.kernels.calibration import KernelMemory
from penstock.engine.kernels.native import FUNCTIONS, AttentionKernel, load_attention_kernel
from penstock.engine.kernels.quant import HybridLinear, Swap, apply_swaps, hybrid_swaps
from penstock.engine.model import ModelArgs
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, SeqSlice

log = structlog.get_logger("penstock.engine")
KV_DTYPES = (torch.float32, torch.bfloat16)
PROBE_CONTEXT = 512  # keys per sequence in the attention probe: a mid-length chat
PROBE_SEQS = 16  # decodes in the probe's step: a busy server's batch
PROBE_CHUNK = 256  # and a prefill chunk beside them
PROBE_BLOCK = 16
DENSE_DTYPES = (torch.float32, torch.bfloat16)
DENSE_PROBE_ROWS = 64  # rows of the dense-dtype probe: a busy server's decode step
ROW_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)  # where the few-row crossover is looked for


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True, slots=True)
class WeightChoice:
    dense_dtype: torch.dtype  # what many-row calls multiply in
    few_rows: dict[str, int]  # per layer shape ("outxin"): below this many rows, the quantized kernel
    swapped: bool  # whether the hybrid layers went in at all

    def to_json(self) -> dict[str, Any]:
        return {"dense": _dtype_name(self.dense_dtype), "few_rows": self.few_rows, "swapped": self.swapped}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightChoice:
        return cls(getattr(torch, data["dense"]), {k: int(v) for k, v in data["few_rows"].items()}, data["swapped"])


def choose_weight_kernels(
    model: nn.Module, dense_dtypes: Seq[torch.dtype] = (torch.float32,), memory: KernelMemory | None = None
) -> WeightChoice:
    """Swap in the hybrid quantized layers, with their dense dtype and few-row crossover timed here,
    or as `memory` holds them from an earlier start on this machine (where it holds them for these shapes).

    Where `dense_dtypes` offers more than one, the dense dtype is timed at DENSE_PROBE_ROWS rows (a
    batch's decode step); then for each layer shape the crossover is the fewest rows at which the
    dense path is no slower than the quantized kernel. Where neither the quantized kernel nor a bf16
    copy beats plain fp32, nothing is swapped.
    """
    swaps = hybrid_swaps(model)
    shapes = _by_shape(_layers(swaps))
    stored = memory.recall("weights") if memory else None
    choice = WeightChoice.from_json(stored) if stored else None
    if choice is None or set(choice.few_rows) != set(shapes):
        choice = _measure_weight_kernels(shapes, dense_dtypes)
        if memory:
            memory.keep("weights", choice.to_json())
    if choice.swapped:
        for name, group in shapes.items():
            for layer in group:
                layer.use_dense(choice.dense_dtype)
                layer.few_rows = choice.few_rows[name]
        apply_swaps(swaps)
    source = memory.sources.get("weights", "measured") if memory else "measured"
    log.info("kernel_choice", kind="weights", **choice.to_json(), source=source)
    return choice


def _measure_weight_kernels(shapes: dict[str, list[HybridLinear]], dense_dtypes: Seq[torch.dtype]) -> WeightChoice:
    dense = dense_dtypes[0]
    if len(dense_dtypes) > 1:
        dense = min(dense_dtypes, key=lambda dtype: _dense_seconds(shapes, dtype, DENSE_PROBE_ROWS))
    few_rows = {name: _crossover(group, dense) for name, group in shapes.items()}
    swapped = dense != torch.float32 or any(rows > 1 for rows in few_rows.values())
    return WeightChoice(dense, few_rows, swapped)


def _by_shape(layers: list[HybridLinear]) -> dict[str, list[HybridLinear]]:
    shapes: dict[str, list[HybridLinear]] = {}
    for layer in layers:
        shapes.setdefault("x".join(map(str, layer.weight.shape)), []).append(layer)
    return shapes


# Each kernel is timed through every layer of a shape in turn, as a forward pass calls them. Timing
# one layer over and over kept its weights in the caches, which flattered the dense weights (four
# to eight times the bytes of the quantized ones): on one Xeon the probe chose fp32 for one-row
# decodes of two shapes, and in the model those calls took 130 microseconds against int4's 70.


def _dense_seconds(shapes: dict[str, list[HybridLinear]], dtype: torch.dtype, rows: int) -> float:
    """One call of every layer."""
    total = 0.0
    for group in shapes.values():
        for layer in group:
            layer.use_dense(dtype)
        x = torch.randn(rows, group[0].weight.shape[1], dtype=group[0].weight.dtype)
        with torch.inference_mode():
            total += median_seconds(lambda: [layer.dense_forward(x) for layer in group])  # noqa: B023 (called at once)
    return total


def _crossover(group: list[HybridLinear], dense: torch.dtype) -> int:
    """The fewest rows at which the dense path is no slower than the quantized kernel (1: never quantized)."""
    for layer in group:
        layer.use_dense(dense)
    for rows in ROW_CANDIDATES:
        x = torch.randn(rows, group[0].weight.shape[1], dtype=group[0].weight.dtype)
        with torch.inference_mode():
            dense_s, quantized_s = interleaved_seconds(
                lambda: [layer.dense_forward(x) for layer in group],  # noqa: B023 (called at once)
                lambda: [layer.few_row_forward(x) for layer in group],  # noqa: B023
                repeats=5,  # each call already runs every layer of the shape
            )
        if dense_s <= quantized_s:
            return rows
    return ROW_CANDIDATES[-1] * 2


def interleaved_seconds(a: Callable[[], object], b: Callable[[], object], repeats: int = 9) -> tuple[float, float]:
    """Median seconds of two calls timed turn about, so a burst of other work on the machine hits both alike."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, slots=True)
class AttentionChoice:
    kv_dtype: torch.dtype
    native: bool  # attention through the native kernel (native.py) rather than per-sequence SDPA

    def to_json(self) -> dict[str, Any]:
        return {"kv_dtype": _dtype_name(self.kv_dtype), "native": self.native}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttentionChoice:
        return cls(getattr(torch, data["kv_dtype"]), bool(data["native"]))


def choose_attention(
    args: ModelArgs, kv_dtypes: Seq[torch.dtype], natives: Seq[bool], memory: KernelMemory | None = None
) -> AttentionChoice:
    """The fastest KV cache dtype and attention path for a step of decodes beside a prefill chunk,
    timed here or as `memory` holds it from an earlier start (where that is still one of the candidates)."""
    # The kernel serves fp32 and bf16 caches; for any other dtype its candidate becomes SDPA's.
    candidates = list(dict.fromkeys(AttentionChoice(d, n and d in FUNCTIONS) for d in kv_dtypes for n in natives))
    if len(candidates) == 1:
        return candidates[0]
    stored = memory.recall("attention") if memory else None
    if stored and AttentionChoice.from_json(stored) in candidates:
        best = AttentionChoice.from_json(stored)
        log.info("kernel_choice", kind="attention", chosen=_label(best).removesuffix("_ms"), source="stored")
        return best
    kernel = load_attention_kernel() if any(natives) else None
    timings = {c: _step_seconds(args, c.kv_dtype, kernel if c.native else None) for c in candidates}
    best = min(timings, key=timings.__getitem__)
    if memory:
        memory.keep("attention", best.to_json())
    log.info(
        "kernel_choice",
        kind="attention",
        **{_label(c): round(s * 1e3, 2) for c, s in timings.items()},
        chosen=_label(best).removesuffix("_ms"),
        source="measured",
    )
    return best


def _label(choice: AttentionChoice) -> str:
    return f"{'native' if choice.native else 'sdpa'}_{_dtype_name(choice.kv_dtype)}_ms"


def _step_seconds(args: ModelArgs, dtype: torch.dtype, kernel: AttentionKernel | None) -> float:
    """One step's attention, every layer: PROBE_SEQS decodes of PROBE_CONTEXT keys and a PROBE_CHUNK-token prefill."""
    blocks_per_seq, chunk_blocks = -(-PROBE_CONTEXT // PROBE_BLOCK), -(-PROBE_CHUNK // PROBE_BLOCK)
    num_blocks = PROBE_SEQS * blocks_per_seq + chunk_blocks
    cache = PagedKVCache(replace(args, n_layers=1), num_blocks, PROBE_BLOCK, dtype=dtype, device="cpu")
    cache.k.normal_()
    cache.v.normal_()
    tables = [range(i * blocks_per_seq, (i + 1) * blocks_per_seq) for i in range(PROBE_SEQS)]
    slices = [SeqSlice(t, PROBE_CONTEXT - 1, 1) for t in tables]
    slices.append(SeqSlice(range(num_blocks - chunk_blocks, num_blocks), 0, PROBE_CHUNK))
    step = PagedAttention.build(cache, slices, "cpu", kernel)
    tokens = PROBE_SEQS + PROBE_CHUNK
    q = torch.randn(1, args.n_heads, tokens, args.head_dim)
    k, v = (torch.randn(1, args.n_kv_heads, tokens, args.head_dim) for _ in range(2))
    with torch.inference_mode():
        return median_seconds(lambda: [step.attend(0, q, k, v) for _ in range(args.n_layers)])


def _layers(swaps: list[Swap]) -> list[HybridLinear]:
    return [replacement for _, _, replacement in swaps]
