"""The paged KV cache's storage, and attention that reads each sequence's keys through its block table.

All sequences of a step go through the model as one flat row of tokens. For attention the queries
are regrouped per sequence (padded), each sequence's keys and values gathered from its blocks, and
one masked scaled-dot-product call serves the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from penstock.engine.model import ModelArgs


class PagedKVCache:
    """Keys and values of every layer: (slots, n_kv_heads, head_dim), slot = block * block_size + offset."""

    def __init__(
        self, args: ModelArgs, num_blocks: int, block_size: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (args.n_layers, num_blocks * block_size, args.n_kv_heads, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self.block_size = block_size

    def copy_block(self, source: int, destination: int) -> None:
        src = slice(source * self.block_size, (source + 1) * self.block_size)
        dst = slice(destination * self.block_size, (destination + 1) * self.block_size)
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]

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
class PagedAttention:
    """The attention context of one step (see model.AttentionContext)."""

    cache: PagedKVCache
    slot_mapping: Tensor  # (T,) where each new token's key and value go
    key_slots: Tensor  # (B, Lk) slots of each sequence's context, padded
    mask: Tensor  # (B, 1, Lq, Lk) which keys each query may see
    query_index: Tensor | None  # (B, Lq) flat token of each padded query; None when every Lq is 1
    output_index: Tensor | None  # (T,) padded position of each flat token

    @classmethod
    def build(cls, cache: PagedKVCache, slices: Seq[SeqSlice], device: torch.device | str) -> PagedAttention:
        contexts = [s.start + s.length for s in slices]
        key_slots = _pad([_slots(s.block_table, n, cache.block_size) for s, n in zip(slices, contexts, strict=True)])
        slot_mapping = torch.cat([key_slots[i, s.start : s.start + s.length] for i, s in enumerate(slices)])
        lq = max(s.length for s in slices)
        query_pos = _pad([torch.arange(s.start, s.start + s.length) for s in slices], fill=-1)  # (B, Lq)
        keys = torch.arange(key_slots.shape[1])
        # A query sees keys up to its own position; padded queries see key 0 so no row is empty.
        mask = (keys[None, None, :] <= query_pos[:, :, None]) | (keys == 0)[None, None, :]
        query_index = output_index = None
        if lq > 1:
            offsets = torch.tensor([0, *[s.length for s in slices]]).cumsum(0)
            flat = torch.arange(lq)[None, :] + offsets[:-1, None]
            valid = query_pos >= 0
            query_index = torch.where(valid, flat, int(offsets[-1]))  # padding reads a zero row at the end
            output_index = torch.nonzero(valid.flatten()).flatten()
        tensors = (slot_mapping, key_slots, mask[:, None], query_index, output_index)
        return cls(cache, *(None if t is None else t.to(device) for t in tensors))

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (1, H, T, D), k and v (1, H_kv, T, D) for the step's flat tokens → (1, H, T, D)."""
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        k_cache.index_copy_(0, self.slot_mapping, k[0].transpose(0, 1))
        v_cache.index_copy_(0, self.slot_mapping, v[0].transpose(0, 1))
        keys = k_cache[self.key_slots].transpose(1, 2)  # (B, H_kv, Lk, D)
        values = v_cache[self.key_slots].transpose(1, 2)
        queries = self._group(q[0].transpose(0, 1))  # (B, H, Lq, D)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=self.mask, enable_gqa=True)
        return self._flatten(out).transpose(0, 1)[None]

    def _group(self, q: Tensor) -> Tensor:
        """(T, H, D) flat queries → (B, H, Lq, D), one row of queries per sequence."""
        if self.query_index is None:
            return q[:, :, None, :]
        padded = torch.cat([q, q.new_zeros(1, *q.shape[1:])])
        return padded[self.query_index].transpose(1, 2)

    def _flatten(self, out: Tensor) -> Tensor:
        """(B, H, Lq, D) → (T, H, D), dropping the padding."""
        if self.output_index is None:
            return out[:, :, 0, :]
        b, h, lq, d = out.shape
        return out.transpose(1, 2).reshape(b * lq, h, d)[self.output_index]


def _slots(block_table: Seq[int], num_tokens: int, block_size: int) -> Tensor:
    blocks = torch.tensor(block_table, dtype=torch.long)
    return (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:num_tokens]


def _pad(rows: list[Tensor], fill: int = 0) -> Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=fill)
