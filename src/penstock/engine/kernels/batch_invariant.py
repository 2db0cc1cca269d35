"""The batch-invariant forward: a token's numbers do not depend on what else shares its step.

Every step, whatever its rows (one decode, 63 decodes beside a prefill chunk, a chunk after a
prefix-cache hit), runs every layer through csrc/batch_invariant.c, whose sums each run in one fixed
order (its header says how). Weights a GGUF stores on a 4- or 8-bit grid are multiplied from that grid,
dequantized by the same FMA the file's own fp32 dequantization amounts to, so the numbers are the fp32
reference's weights; other weights are packed as fp32. Activations, norms, attention and the KV cache
stay fp32 unless the cache is configured bf16.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from penstock.engine.checkpoint import Grid
from penstock.engine.kernels.native import QueryRows, native_library
from penstock.engine.model import rope_tables
from penstock.engine.paged_attention import PagedKVCache, StepInput, slot_mapping

if TYPE_CHECKING:  # the loader imports kernel_choice from this package
    from penstock.engine.loader import LoadedModel

TILE = 16  # outputs per weight tile (csrc NR)
GROUP = 32  # inputs per scale of a quantized tile (csrc GROUP, a constant there)
FORMATS = {"f32": 0, 4: 1, 8: 2}


class WeightStruct(ctypes.Structure):
    _fields_ = [
        ("format", ctypes.c_int32),
        ("n", ctypes.c_int32),
        ("k", ctypes.c_int32),
        ("group", ctypes.c_int32),
        ("values", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("lows", ctypes.c_void_p),
    ]


class LayerStruct(ctypes.Structure):
    _fields_ = [
        ("attention_norm", ctypes.c_void_p),
        ("ffn_norm", ctypes.c_void_p),
        ("wqkv", WeightStruct),
        ("wo", WeightStruct),
        ("w13", WeightStruct),
        ("w2", WeightStruct),
    ]


class StepStruct(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_void_p) for name in ("block_tables", "table_starts", "context_lens", "slots", "cos", "sin")
    ]


class ShapeStruct(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int32) for name in ("dim", "hidden", "n_heads", "n_kv", "head_dim", "block_size")),
        ("n_layers", ctypes.c_int32),
        ("kv_bf16", ctypes.c_int32),
        ("eps", ctypes.c_float),
    ]


@dataclass(frozen=True, slots=True)
class PackedWeight:
    """A weight in csrc/batch_invariant.c's tiles; `tensors` keeps the memory its struct points at alive."""

    struct: WeightStruct
    tensors: tuple[Tensor, ...]

    @classmethod
    def pack(cls, weight: Tensor, grid: Grid | None = None) -> PackedWeight:
        """From the exact grid where there is one, else from the weight itself, as fp32."""
        n, k = weight.shape
        if grid is None or grid.group != GROUP or k % GROUP:
            values = by_tile(weight.detach().float())
            return cls(WeightStruct(FORMATS["f32"], n, k, 1, values.data_ptr(), None, None), (values,))
        q = by_tile(grid.q)  # (tiles, k, 16)
        values = (q[..., :8] | (q[..., 8:] << 4)).contiguous() if grid.bits == 4 else q
        scales, lows = by_tile(grid.scale.float()), by_tile(grid.low.float())
        pointers = (values.data_ptr(), scales.data_ptr(), lows.data_ptr())
        return cls(WeightStruct(FORMATS[grid.bits], n, k, grid.group, *pointers), (values, scales, lows))

    def unpack(self) -> Tensor:
        """The (n, k) fp32 weights the kernel multiplies by."""
        out = torch.empty(self.struct.n, self.struct.k)
        native_library().bi_unpack(ctypes.byref(self.struct), ctypes.c_void_p(out.data_ptr()))
        return out


def by_tile(values: Tensor) -> Tensor:
    """(n, c) → (ceil(n / 16), c, 16): for each column, 16 consecutive rows' values together; zero rows pad."""
    n, columns = values.shape
    padded = F.pad(values, (0, 0, 0, -n % TILE)) if n % TILE else values
    return padded.view(-1, TILE, columns).transpose(1, 2).contiguous()


class BatchInvariantForward:
    """The loaded model's every layer and its head, packed for csrc/batch_invariant.c."""

    name = "batch_invariant"

    def __init__(self, loaded: LoadedModel, library: ctypes.CDLL) -> None:
        self.args, self.library = loaded.args, library
        model, grids = loaded.model, loaded.grids

        def packed(name: str, weight: Tensor) -> PackedWeight:
            return PackedWeight.pack(weight, grids.get(name))

        self.weights: list[PackedWeight] = []
        layers = []
        for index, block in enumerate(model.layers):
            prefix = f"layers.{index}."
            parts = [
                packed(prefix + "attention.wqkv.weight", block.attention.wqkv.weight),
                packed(prefix + "attention.wo.weight", block.attention.wo.weight),
                packed(prefix + "feed_forward.w13.weight", block.feed_forward.w13.weight),
                packed(prefix + "feed_forward.w2.weight", block.feed_forward.w2.weight),
            ]
            self.weights += parts
            norms = (block.attention_norm.weight.data_ptr(), block.ffn_norm.weight.data_ptr())
            layers.append(LayerStruct(*norms, *(part.struct for part in parts)))
        self.layers = (LayerStruct * len(layers))(*layers)
        head_name = "tok_embeddings.weight" if loaded.args.tie_embeddings else "output.weight"
        self.head = packed(head_name, model.output.weight)
        self.embedding = model.tok_embeddings.weight
        self.final_norm = model.norm.weight
        positions = torch.arange(loaded.args.max_seq_len)
        self.cos, self.sin = rope_tables(positions, loaded.args.head_dim, loaded.args.rope_theta, torch.float32)

    @classmethod
    def build(cls, loaded: LoadedModel) -> BatchInvariantForward | None:
        """The packed model, or None where it cannot run here (no native library, not fp32 on the CPU)."""
        library = native_library()
        if library is None or loaded.dtype != torch.float32 or loaded.device.type != "cpu":
            return None
        return cls(loaded, library)

    def __call__(self, step: StepInput, cache: PagedKVCache) -> Tensor:
        """Logits (len(step.logits_at), vocab) at the step's sampling rows; the step's keys and values cached."""
        positions = step.positions()
        if int(positions.max()) >= self.args.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is past the model's {self.args.max_seq_len}")
        x = self.embedding[torch.tensor(list(step.tokens))].contiguous()
        queries = QueryRows.build((s.block_table, s.start, s.length) for s in step.slices)
        cos, sin = self.cos[positions].contiguous(), self.sin[positions].contiguous()
        slots = slot_mapping(step.slices, cache.block_size)
        final = torch.empty_like(x)
        self._layers(x, cache, queries, slots, cos, sin, final)
        return self.linear(self.head, final[step.logits_at].contiguous())

    def _layers(
        self, x: Tensor, cache: PagedKVCache, queries: QueryRows, slots: Tensor, cos: Tensor, sin: Tensor, out: Tensor
    ) -> None:
        _, tables, starts, lens = queries.pointers()
        step = StepStruct(tables, starts, lens, slots.data_ptr(), cos.data_ptr(), sin.data_ptr())
        args = self.args
        shape = ShapeStruct(
            args.dim, args.hidden_dim, args.n_heads, args.n_kv_heads, args.head_dim, cache.block_size,
            args.n_layers, cache.k.dtype == torch.bfloat16, args.norm_eps,
        )  # fmt: skip
        failed = self.library.bi_layers(
            ctypes.c_void_p(x.data_ptr()),
            x.shape[0],
            self.layers,
            ctypes.c_void_p(self.final_norm.data_ptr()),
            ctypes.c_void_p(cache.k.data_ptr()),
            ctypes.c_void_p(cache.v.data_ptr()),
            ctypes.c_int64(cache.k[0].numel()),
            ctypes.byref(step),
            ctypes.byref(shape),
            ctypes.c_void_p(out.data_ptr()),
        )
        if failed:
            raise MemoryError("the batch-invariant forward could not allocate its scratch memory")

    def linear(self, weight: PackedWeight, x: Tensor) -> Tensor:
        """x (m, k) fp32 contiguous → (m, n) through the invariant matmul."""
        out = torch.empty(x.shape[0], weight.struct.n)
        if self.library.bi_linear(
            ctypes.byref(weight.struct), ctypes.c_void_p(x.data_ptr()), x.shape[0], ctypes.c_void_p(out.data_ptr())
        ):
            raise MemoryError("the batch-invariant matmul could not allocate its scratch memory")
        return out
