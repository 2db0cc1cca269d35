"""Who runs this step, and how many of their tokens.

Every step spends a token budget: running sequences first (a decode costs one token, an unfinished
prompt continues in chunks), then waiting sequences in priority order, FCFS within a class. A long
prompt is cut into chunks so it never stalls the decodes beside it. When the cache runs out of
blocks, the lowest-priority, newest running sequence is preempted and recomputed later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from penstock.engine.block_manager import BlockManager
from penstock.engine.sequence import Priority, Sequence, Status


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_batched_tokens: int = 512


@dataclass(frozen=True, slots=True)
class Chunk:
    """Tokens [start, start + length) of one sequence go through the model this step."""

    seq: Sequence
    start: int
    length: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so its logits pick the next one."""
        return self.start + self.length == len(self.seq)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: dict[Priority, deque[Sequence]] = {p: deque() for p in Priority}
        self.running: list[Sequence] = []
        self.preemptions = 0

    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def add(self, seq: Sequence) -> None:
        self.waiting[seq.priority].append(seq)

    def start(self, seq: Sequence) -> None:
        """Run a sequence that already holds its blocks (a fork of a running one)."""
        seq.status = Status.RUNNING
        self.running.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out, wherever it is, and free its blocks (finish or abort)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting[seq.priority]:
            self.waiting[seq.priority].remove(seq)
        self.blocks.release(seq)
        seq.status = Status.FINISHED

    def schedule(self) -> list[Chunk]:
        budget = self.config.max_batched_tokens
        chunks: list[Chunk] = []
        for seq in sorted(self.running, key=Sequence.order):
            if seq.status is not Status.RUNNING or budget == 0:
                continue  # preempted by an earlier iteration, or no budget left
            length = min(seq.num_uncomputed, budget)
            if not self._make_room(seq, seq.num_computed + length):
                continue  # it was the victim itself
            chunks.append(Chunk(seq, seq.num_computed, length))
            budget -= length
        return chunks + self._admit(budget)

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Free blocks by preempting until `seq` fits; False if `seq` itself had to go."""
        while not self.blocks.can_grow(seq, num_tokens):
            victim = max(self.running, key=Sequence.order)
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.grow(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.reset_for_recompute()
        self.waiting[seq.priority].appendleft(seq)  # first in line again: it had already been admitted
        self.preemptions += 1

    def _admit(self, budget: int) -> list[Chunk]:
        chunks: list[Chunk] = []
        for priority in Priority:
            queue = self.waiting[priority]
            while queue and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = queue[0]
                self.blocks.admit(seq)
                length = min(seq.num_uncomputed, budget)
                if not self.blocks.can_grow(seq, seq.num_computed + length):
                    self.blocks.release(seq)  # no room: it waits, holding nothing
                    seq.num_computed = seq.num_cached = 0
                    return chunks
                self.blocks.grow(seq, seq.num_computed + length)
                self.blocks.stats.record(seq)
                queue.popleft()
                seq.status = Status.RUNNING
                self.running.append(seq)
                chunks.append(Chunk(seq, seq.num_computed, length))
                budget -= length
        return chunks
