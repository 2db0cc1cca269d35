"""The paged KV cache's storage, and attention that reads each sequence's keys through its block table.

All sequences of a step go through the linear layers as one flat row of tokens. Attention then runs
per sequence: its blocks are gathered with one index_select and one SDPA call serves its queries.
Measured on a 2-core CPU, that beats padding the batch into one masked SDPA call by 3-4x: padding
gathers and attends over every sequence's longest neighbour.

On the CPU, where kernel_choice measured it faster, every query goes instead to the native kernel
(native.py), which reads keys and values in place through the block tables: one call per layer for
the whole step, decodes and prefill chunks alike.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from penstock.engine.kernels.native import AttentionKernel, QueryRows
from penstock.engine.model import ModelArgs


class PagedKVCache:
    """Keys and values of every layer: (layers, blocks, block_size, n_kv_heads, head_dim)."""

    def __init__(
        self, args: ModelArgs, num_blocks: int, block_size: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (args.n_layers, num_blocks, block_size, args.n_kv_heads, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self.block_size = block_size

    def copy_block(self, source: int, destination: int) -> None:
        self.k[:, destination] = self.k[:, source]
        self.v[:, destination] = self.v[:, source]

    @staticmethod
    def bytes_per_token(args: ModelArgs, dtype: torch.dtype) -> int:
        return 2 * args.n_layers * args.n_kv_heads * args.head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True, slots=True)
class SeqSlice:
    """One sequence's part of a step: tokens [start, start + length) with its block table."""

    block_table: Seq[int]
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class StepInput:
    """What one step computes: its tokens in flat order, each sequence's slice, and the rows that sample."""

    tokens: Seq[int]
    slices: Seq[SeqSlice]
    logits_at: Tensor  # (n,) indices into tokens

    def positions(self) -> Tensor:
        return torch.cat([torch.arange(s.start, s.start + s.length) for s in self.slices])


@dataclass(frozen=True, slots=True)
class SeqView:
    """Where one sequence's queries sit in the flat batch, and which keys they see."""

    queries: slice
    blocks: Tensor  # (n_blocks,) block ids holding its context
    context: int  # keys in its context, this step's included
    mask: Tensor | None  # (length, context) causal mask for a chunk; None for a single query


@dataclass(frozen=True, slots=True)
class PagedAttention:
    """The attention context of one step (see model.AttentionContext)."""

    cache: PagedKVCache
    slot_mapping: Tensor  # (T,) flat slot (block * block_size + offset) of each new token
    views: tuple[SeqView, ...]  # what SDPA serves: every sequence, where there is no kernel
    kernel: AttentionKernel | None = None
    queries: QueryRows | None = None  # with a kernel: every query of the step, for it

    @classmethod
    def build(
        cls,
        cache: PagedKVCache,
        slices: Seq[SeqSlice],
        device: torch.device | str,
        kernel: AttentionKernel | None = None,
    ) -> PagedAttention:
        bs = cache.block_size
        views, tables, offset = [], [], 0
        for s in slices:
            context = s.start + s.length
            table = list(s.block_table[: -(-context // bs)])
            blocks = torch.tensor(table, dtype=torch.long)
            positions = torch.arange(s.start, context)
            if kernel is not None:
                tables.append((table, s.start, s.length))
            else:
                mask = torch.arange(context)[None, :] <= positions[:, None] if s.length > 1 else None
                views.append(SeqView(slice(offset, offset + s.length), blocks.to(device), context, _to(mask, device)))
            offset += s.length
        queries = QueryRows.build(tables) if kernel is not None else None
        return cls(cache, slot_mapping(slices, bs).to(device), tuple(views), kernel, queries)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (1, H, T, D), k and v (1, H_kv, T, D) for the step's flat tokens → (1, H, T, D)."""
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        _, n_kv, _, head_dim = k.shape
        # A cache narrower than the model (bf16 under fp32) halves the bytes attention reads.
        k_cache.view(-1, n_kv, head_dim).index_copy_(0, self.slot_mapping, k[0].transpose(0, 1).to(k_cache.dtype))
        v_cache.view(-1, n_kv, head_dim).index_copy_(0, self.slot_mapping, v[0].transpose(0, 1).to(v_cache.dtype))
        if self.kernel is not None and self.queries is not None:
            _, n_heads, tokens, _ = q.shape
            out = torch.empty(tokens, n_heads, head_dim, dtype=q.dtype)
            self.kernel(q[0].transpose(0, 1).contiguous(), k_cache, v_cache, self.queries, out)
            return out.transpose(0, 1)[None]
        q = q.to(k_cache.dtype)
        return torch.cat([self._one(view, q, k_cache, v_cache) for view in self.views], dim=2).to(k.dtype)

    @staticmethod
    def _one(view: SeqView, q: Tensor, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        n_kv, head_dim = k_cache.shape[-2:]
        keys = k_cache.index_select(0, view.blocks).view(-1, n_kv, head_dim)[: view.context]
        values = v_cache.index_select(0, view.blocks).view(-1, n_kv, head_dim)[: view.context]
        return F.scaled_dot_product_attention(
            q[:, :, view.queries],
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            attn_mask=view.mask,
            enable_gqa=True,
        )


def slot_mapping(slices: Seq[SeqSlice], block_size: int) -> Tensor:
    """(T,) int64: each new token's cache slot, block · block_size + offset, in step order."""
    slots = []
    for s in slices:
        positions = torch.arange(s.start, s.start + s.length)
        blocks = torch.tensor(list(s.block_table[: -(-(s.start + s.length) // block_size)]), dtype=torch.long)
        slots.append(blocks[positions // block_size] * block_size + positions % block_size)
    return torch.cat(slots)


def _to(tensor: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if tensor is None else tensor.to(device)
