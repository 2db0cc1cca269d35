"""Few-row steps of an int4 model with the steps between its matmuls done natively.

A step of fewer rows than every body layer's int4 crossover (single-stream and small-batch decode)
takes each layer's four int4 matmuls (quant.HybridInt4Linear) and, between them, one call each to
csrc/decode_layer.c instead of about 25 PyTorch ops: the same computation, the values crossing a
matmul rounded to bf16 as the PyTorch path rounds them (native.LayerSteps). Where the int4 matmuls
are native too (int4_matmul.c), every layer runs in one call, with no Python between the layers: a
single-stream token took 3.4 ms instead of 4.8 (Zen 5 EPYC). The output head stays the model's own
(quant.HybridHead). A model without int4 body layers, or without the native library or its attention
kernel (CUDA included), keeps Transformer.forward for every step.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

from penstock.engine.kernels.native import LayerShape, LayerSteps, StepTensors
from penstock.engine.kernels.quant import HybridInt4Linear
from penstock.engine.model import Transformer, rope_tables
from penstock.engine.paged_attention import PagedAttention

MAX_HEAD_DIM = 512  # csrc/decode_layer.c's


@dataclass(frozen=True, slots=True)
class _Layer:
    attention_norm: Tensor
    wqkv: HybridInt4Linear
    wo: HybridInt4Linear
    ffn_norm: Tensor
    w13: HybridInt4Linear
    w2: HybridInt4Linear


class FusedDecode:
    def __init__(self, model: Transformer, layers: list[_Layer], steps: LayerSteps) -> None:
        self.model = model
        self.layers = layers
        self.steps = steps
        # The int4 matmuls are this path's only kernels: below every layer's crossover, as kernel_choice set it.
        self.max_rows = min(linear.few_rows for layer in layers for linear in _linears(layer))
        args = model.args
        self.shape = LayerShape(args.dim, args.hidden_dim, args.n_heads, args.n_kv_heads, args.head_dim, args.norm_eps)
        self.weights = _native_weights(layers)  # None: PyTorch's int4 kernel, called layer by layer

    @classmethod
    def build(cls, model: Transformer, steps: LayerSteps | None) -> FusedDecode | None:
        """The fused path for `model`, or None where it does not apply."""
        if steps is None or model.args.head_dim > MAX_HEAD_DIM or model.norm.weight.device.type != "cpu":
            return None
        layers = []
        for block in model.layers:
            attention, ffn = block.attention, block.feed_forward
            linears = (attention.wqkv, attention.wo, ffn.w13, ffn.w2)
            if not all(isinstance(linear, HybridInt4Linear) for linear in linears):
                return None
            norms = (block.attention_norm.weight, block.ffn_norm.weight)
            if any(norm.dtype != torch.float32 for norm in norms):
                return None
            layers.append(_Layer(norms[0], linears[0], linears[1], norms[1], linears[2], linears[3]))
        return cls(model, layers, steps)

    def applies(self, rows: int, context: PagedAttention) -> bool:
        return 0 < rows < self.max_rows and context.kernel is not None and context.queries is not None

    def forward(self, tokens: Tensor, positions: Tensor, context: PagedAttention, logits_at: Tensor) -> Tensor:
        """As Transformer.forward with `logits_at`: tokens (1, T) → logits (1, len(logits_at), vocab)."""
        args = self.model.args
        x = self.model.tok_embeddings(tokens[0]).contiguous()  # (T, dim) fp32: the residual stream
        cos, sin = rope_tables(positions, args.head_dim, args.rope_theta, torch.float32)
        assert context.queries is not None
        step = StepTensors(cos, sin, context.slot_mapping, context.queries)
        final = torch.empty(x.shape[0], args.dim)
        if self.weights is not None:
            cache = context.cache
            self.steps.decode_layers(x, self.weights, self.model.norm.weight, cache.k, cache.v, step, self.shape, final)
        else:
            self._layer_by_layer(x, step, context, final)
        return self.model.output(final[logits_at][None])

    def _layer_by_layer(self, x: Tensor, step: StepTensors, context: PagedAttention, final: Tensor) -> None:
        args, steps, rows = self.model.args, self.steps, x.shape[0]
        normed = torch.empty(rows, args.dim, dtype=torch.bfloat16)
        attended = torch.empty(rows, args.n_heads * args.head_dim, dtype=torch.bfloat16)
        hidden = torch.empty(rows, args.hidden_dim, dtype=torch.bfloat16)
        cache = context.cache
        delta = None
        for index, layer in enumerate(self.layers):
            steps.add_rms_norm(x, delta, layer.attention_norm, args.norm_eps, normed)
            qkv = layer.wqkv.few_row_forward(normed)
            steps.rope_attend(
                qkv, step.cos, step.sin, cache.k[index], cache.v[index], step.slots, step.queries, attended
            )
            steps.add_rms_norm(x, layer.wo.few_row_forward(attended), layer.ffn_norm, args.norm_eps, normed)
            steps.silu_mul(layer.w13.few_row_forward(normed), hidden)
            delta = layer.w2.few_row_forward(hidden)
        steps.add_rms_norm(x, delta, self.model.norm.weight, args.norm_eps, final)


def _native_weights(layers: list[_Layer]) -> ctypes.Array[ctypes.c_void_p] | None:
    """Per layer, its norms' weights and each int4 matmul's packed weights, scales and lows, as
    csrc/decode_layer.c's decode_layers reads them; None unless every matmul is int4_matmul.c's."""
    if not all(linear.native is not None for layer in layers for linear in _linears(layer)):
        return None
    pointers: list[int] = []
    for layer in layers:
        linears = _linears(layer)
        pointers += [layer.attention_norm.data_ptr(), layer.ffn_norm.data_ptr()]
        for name in ("packed", "scales", "lows"):
            pointers += [getattr(linear, name).data_ptr() for linear in linears]
    return (ctypes.c_void_p * len(pointers))(*pointers)


def _linears(layer: _Layer) -> tuple[HybridInt4Linear, ...]:
    return layer.wqkv, layer.wo, layer.w13, layer.w2
