"""The paged KV cache's bookkeeping: fixed-size blocks, per-sequence block tables, reference counts,
a free list, and automatic prefix caching.

A full block is keyed by hash(parent block's hash, its token ids, adapter). A block is registered
under its key only once its keys and values are computed, so a hit always reads real data. Freed
blocks keep their contents and key until they are needed again, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from penstock.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    key: int | None = None  # prefix-cache key, once the block is full and computed
    token_ids: tuple[int, ...] = field(default=())


def block_key(parent: int | None, token_ids: Seq[int], adapter: str | None) -> int:
    return hash((parent, tuple(token_ids), adapter))


@dataclass(slots=True)
class PrefixStats:
    queried_tokens: int = 0
    hit_tokens: int = 0

    def record(self, seq: Sequence) -> None:
        """Count one admission: every token but the last could have come from the cache."""
        self.queried_tokens += len(seq) - 1
        self.hit_tokens += seq.num_cached

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.prefix_caching = prefix_caching  # off: every prompt is computed in full, nothing is keyed
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU first
        self.cached: dict[int, int] = {}  # key → block id
        self.stats = PrefixStats()

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / len(self.blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def admit(self, seq: Sequence) -> None:
        """Attach the cached blocks matching the sequence's leading full blocks.

        At least one token is always left to compute: its logits start the generation.
        """
        for index in range((len(seq) - 1) // self.block_size if self.prefix_caching else 0):
            tokens = self._tokens(seq, index)
            key = block_key(seq.block_keys[-1] if seq.block_keys else None, tokens, seq.adapter)
            block_id = self.cached.get(key)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.block_keys.append(key)
        seq.num_cached = seq.num_computed = len(seq.block_table) * self.block_size

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Give the sequence blocks for its first `num_tokens` tokens (callers check can_grow)."""
        while len(seq.block_table) < self.blocks_needed(num_tokens):
            block_id = next(iter(self.free))
            self._evict(block_id)
            self._take(block_id)
            seq.block_table.append(block_id)

    def can_fork(self, parent: Sequence) -> bool:
        return parent.num_computed % self.block_size == 0 or bool(self.free)

    def fork(self, parent: Sequence, child: Sequence) -> tuple[int, int] | None:
        """Share the parent's full blocks with the child and give it its own copy of the partial tail.

        Returns (source, destination) of the tail block whose contents the caller must copy, if any.
        """
        full, partial = divmod(parent.num_computed, self.block_size)
        for block_id in parent.block_table[:full]:
            self._take(block_id)
        child.block_table = parent.block_table[:full]
        child.block_keys = parent.block_keys[:full]
        child.num_computed = parent.num_computed
        if not partial:
            return None
        self.grow(child, parent.num_computed)
        return parent.block_table[full], child.block_table[full]

    def register(self, seq: Sequence) -> None:
        """Key the sequence's full, computed blocks so later requests can reuse them."""
        if not self.prefix_caching:
            return
        for index in range(len(seq.block_keys), seq.num_computed // self.block_size):
            tokens = self._tokens(seq, index)
            key = block_key(seq.block_keys[-1] if seq.block_keys else None, tokens, seq.adapter)
            block = self.blocks[seq.block_table[index]]
            if block.key is None and key not in self.cached:
                block.key, block.token_ids = key, tokens
                self.cached[key] = block.block_id
            seq.block_keys.append(key)

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's references; unreferenced blocks become free but keep their contents."""
        for block_id in reversed(seq.block_table):  # the tail is least likely to be shared: evict it first
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.block_keys = []

    def _tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[index * self.block_size : (index + 1) * self.block_size])

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.key is not None:
            del self.cached[block.key]
            block.key, block.token_ids = None, ()
