"""Weight-only quantized linear layers for the CPU, used where they are measured to win.

A forward with few rows (single-stream decode) is bound by reading the weights, so an int4
kernel (groups of 32, bf16 activations; an eighth of fp32's bytes) wins there, while a dense GEMM
wins from about 8-32 rows up (batched decode, prefill). The int4 kernel is csrc/int4_matmul.c where
the CPU has AVX-512 BF16, else PyTorch's. The hybrid layers keep both and pick per call.
For a GGUF whose weights are Q4_0/Q4_1 (groups of 32) the int4 copy holds the same 4-bit grid, so
little is lost beyond bf16 rounding. The output head, which picks the token, gets per-channel
int8 instead, and its few best candidates per row are then scored again with the exact fp32 weight:
PyTorch's int8 kernel and bf16 GEMMs give logits rounded to bf16 (steps of 0.125 at a logit of 20), and
on SmolLM2 that rounding, not the 4-bit body, was most of the quantized model's distance from fp32.
Where the CPU has AVX-512 the head's int8 kernel is csrc/int8_matmul.c, fp32 in and out.
Whether any of this wins depends on the CPU's kernels: kernel_choice measures it at load.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from penstock.engine.kernels.native import load_int4_matmul, load_int8_matmul

GROUP = 32
FEW_ROWS = 16  # below this, int4 is faster than fp32 on the measured CPU; kernel_choice measures it per layer
PACK_ROWS = 64  # the rows oneDNN's weight layout is blocked for: a busy decode step (1-512 all ran alike)
RESCORED = 16  # the head's candidates per row whose logits are recomputed from the fp32 weight
NATIVE_TILE = 16  # outputs per row tile of native.Int4Matmul and Int8Matmul


class HybridLinear(nn.Module):
    """A few rows through a weight-only quantized kernel, more through a dense matmul.

    By default the dense path is the exact fp32 weight from FEW_ROWS up. kernel_choice may move the
    crossover (`few_rows`) and give the dense path a bf16 copy (`use_dense`) where its timings say so:
    on a CPU with native bf16 a bf16 GEMM runs 3-4x faster than fp32 at 16-512 rows.
    """

    dense: Tensor | None  # the dense path's own copy of the weight; None: the fp32 weight itself

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight  # fp32 (shared when tied)
        self.register_buffer("dense", None, persistent=False)
        self.few_rows = FEW_ROWS

    def use_dense(self, dtype: torch.dtype) -> None:
        self.dense = None if dtype == self.weight.dtype else dense_copy(self.weight, dtype)

    @property
    def dense_dtype(self) -> torch.dtype:
        return self.weight.dtype if self.dense is None else self.dense.dtype

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        if 0 < rows < self.few_rows:  # no rows (a prefill chunk that samples nothing) go dense too
            return self.few_row_forward(x.reshape(rows, x.shape[-1])).view(*x.shape[:-1], -1).to(x.dtype)
        return self.dense_forward(x)

    def dense_forward(self, x: Tensor) -> Tensor:
        if self.dense is None:
            return F.linear(x, self.weight)
        return dense_linear(x.to(self.dense.dtype), self.dense).to(x.dtype)

    def few_row_forward(self, x: Tensor) -> Tensor:
        """(rows, in_features) in; the quantized kernel's output, in whatever dtype it gives."""
        raise NotImplementedError


class HybridInt4Linear(HybridLinear):
    """Few rows through native.Int4Matmul where this CPU has AVX-512 BF16, else PyTorch's int4 kernel;
    bf16 in and out either way, the same sum."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach()
        self.native = load_int4_matmul() if weight.device.type == "cpu" and weight.shape[0] % NATIVE_TILE == 0 else None
        if self.native is not None:
            packed, scales, lows = pack_int4_bf16(weight)
            self.register_buffer("lows", lows, persistent=False)
        else:
            packed, scales = pack_int4(weight)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales", scales, persistent=False)

    def few_row_forward(self, x: Tensor) -> Tensor:
        if self.native is not None:
            return self.native(x.to(torch.bfloat16).contiguous(), self.packed, self.scales, self.lows)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, GROUP, self.scales)


class HybridHead(HybridLinear):
    """The output head: per-channel int8 weights for few-row calls, the dense path for the rest, and
    every row's RESCORED best candidates scored again exactly from the fp32 weight (shared when tied).

    Measured on SmolLM2 over real text against fp32 (teacher-forced, 2,048 positions), rescoring
    took the int4 model's KL divergence from 0.0029 to 0.0004 and its top-1 agreement from 96.0% to
    98.8%; with bf16 dense layers, from 0.0008 to 0.0003 and 97.9% to 99.2%. The greedy token is
    exact whenever fp32's choice is among the approximate top RESCORED, and sampling sees exact
    logits where nearly all the probability lies.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(1) / 127).clamp(min=1e-12)
        int8 = torch.round(weight / scales[:, None]).to(torch.int8)
        fits = weight.device.type == "cpu" and weight.shape[0] % NATIVE_TILE == 0 and weight.shape[1] % 4 == 0
        self.native = load_int8_matmul() if fits else None
        if self.native is not None:  # fp32 in and out, the tiles csrc/int8_matmul.c reads
            self.register_buffer("int8", pack_int8_tiles(int8), persistent=False)
            self.register_buffer("scales", scales, persistent=False)
        else:  # PyTorch's kernel: bf16 in and out
            self.register_buffer("int8", int8, persistent=False)
            self.register_buffer("scales", scales.to(torch.bfloat16), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        logits = super().forward(x)
        rows = logits.numel() // logits.shape[-1]
        if rows == 0 or (rows >= self.few_rows and self.dense is None):
            return logits  # the fp32 weight itself served them
        return rescore_top(logits, x, self.weight)

    def few_row_forward(self, x: Tensor) -> Tensor:
        if self.native is not None:
            return self.native(x.float().contiguous(), self.int8, self.scales)
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.int8, self.scales)


def rescore_top(logits: Tensor, x: Tensor, weight: Tensor, k: int = RESCORED) -> Tensor:
    """`logits` with each row's k largest recomputed as fp32 dot products of `x` with their weight rows."""
    flat, hidden = logits.reshape(-1, logits.shape[-1]), x.reshape(-1, x.shape[-1], 1)
    top = flat.topk(min(k, flat.shape[-1]), dim=-1).indices  # (rows, k)
    exact = torch.bmm(weight[top], hidden.to(weight.dtype)).squeeze(-1).to(flat.dtype)
    return flat.scatter(-1, top, exact).view(logits.shape)


def dense_copy(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """The dense path's copy of `weight` in `dtype`; a bf16 copy on the CPU in oneDNN's blocked layout.

    Given a plain weight, oneDNN re-blocks it on every call. Blocked once here, a 30-layer pass of
    SmolLM2's projections (weights streamed from memory, as in serving) took 16 ms instead of 29 at
    16 rows and 25-28 ms instead of 38 at 32 on a Zen 4 EPYC, with the same bits out; at 512 rows, no
    difference. Where oneDNN is not built in, the plain copy.
    """
    copy = weight.detach().to(dtype)
    if copy.device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return copy
    try:
        return torch.ops.mkldnn._reorder_linear_weight(copy, PACK_ROWS)
    except (AttributeError, RuntimeError):  # a build without the op: its absence costs speed only
        return copy


def dense_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T for a plain weight or one from dense_copy (x in the weight's dtype)."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return F.linear(x, weight)


def int4_grid(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit groups of 32 along the input dimension: q (out, in) in 0..15, and each group's
    scale and low (out, groups), w ≈ q·scale + low."""
    out_features, in_features = weight.shape
    groups = weight.float().view(out_features, in_features // GROUP, GROUP)
    low = groups.amin(-1)
    scale = ((groups.amax(-1) - low) / 15).clamp(min=1e-12)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return q.view(out_features, in_features), scale, low


def pack_int4_bf16(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """int4_grid in csrc/int4_matmul.c's layout: (packed bytes, fp16 scales, fp16 lows).

    Row tiles of 16 outputs; per tile and 4 inputs, 32 bytes whose byte 2i+j holds output i's inputs j
    (low nibble) and 2+j (high nibble); scales and lows (tiles, groups, 16).
    """
    q, scale, low = int4_grid(weight)
    out_features, in_features = q.shape
    tiles = q.view(out_features // NATIVE_TILE, NATIVE_TILE, in_features // 4, 2, 2).permute(0, 2, 1, 4, 3)
    packed = (tiles[..., 0] | (tiles[..., 1] << 4)).to(torch.uint8).contiguous()

    def by_tile(values: Tensor) -> Tensor:
        return values.view(out_features // NATIVE_TILE, NATIVE_TILE, -1).transpose(1, 2).to(torch.float16).contiguous()

    return packed, by_tile(scale), by_tile(low)


def pack_int8_tiles(int8: Tensor) -> Tensor:
    """(out, in) int8 → (out/16, in, 16): for each input, the weights of 16 consecutive outputs together."""
    out_features, in_features = int8.shape
    return int8.view(out_features // NATIVE_TILE, NATIVE_TILE, in_features).transpose(1, 2).contiguous()


def pack_int4(weight: Tensor) -> tuple[Tensor, Tensor]:
    """int4_grid in PyTorch's CPU kernel's layout: (packed, bf16 scales and zeros)."""
    q, scale, low = int4_grid(weight)
    # The kernel computes w = (q - 8)·scale + zero, so zero = low + 8·scale; layout (groups, out, 2).
    scales_zeros = torch.stack([scale.T, (low + 8 * scale).T], dim=-1).contiguous().to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    return packed, scales_zeros


Swap = tuple[nn.Module, str, HybridLinear]  # (parent, attribute, replacement)


def hybrid_swaps(model: nn.Module) -> list[Swap]:
    """The blocks' linear layers as int4 hybrids and the output head as a HybridHead, not yet swapped in."""
    swaps: list[Swap] = []
    for block in model.layers:
        for parent in (block.attention, block.feed_forward):
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear) and child.in_features % GROUP == 0:
                    swaps.append((parent, name, HybridInt4Linear(child)))
    if isinstance(model.output, nn.Linear):
        swaps.append((model, "output", HybridHead(model.output)))
    return swaps


def apply_swaps(swaps: list[Swap]) -> int:
    for parent, name, replacement in swaps:
        setattr(parent, name, replacement)
    return len(swaps)


def quantize_layers(model: nn.Module) -> int:
    """Swap in the hybrid layers; the number swapped."""
    return apply_swaps(hybrid_swaps(model))


Route = Literal["exact", "few_rows", "dense"]


@contextmanager
def every_call_through(model: nn.Module, route: Route) -> Iterator[None]:
    """Route every hybrid layer's calls one way, whatever their rows, and restore the routing after.

    exact: the fp32 weights (the reference); few_rows: the quantized kernels (what decodes use);
    dense: the dense copies (what prefill and busy decode steps use). For measuring fidelity.
    """
    layers = [m for m in model.modules() if isinstance(m, HybridLinear)]
    saved = [(layer.few_rows, layer.dense) for layer in layers]
    for layer in layers:
        layer.few_rows = sys.maxsize if route == "few_rows" else 0
        if route == "exact":
            layer.dense = None
    try:
        yield
    finally:
        for layer, (few_rows, dense) in zip(layers, saved, strict=True):
            layer.few_rows, layer.dense = few_rows, dense
