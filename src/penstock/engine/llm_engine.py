"""The step loop: schedule, run the model, sample, stream — the engine on one screen.

Not thread-safe: one thread owns an LLMEngine (see async_engine for the thread that does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import torch

from penstock.engine.block_manager import BlockManager
from penstock.engine.loader import LoadedModel
from penstock.engine.model_runner import ModelRunner
from penstock.engine.paged_attention import PagedKVCache
from penstock.engine.sampler import sample
from penstock.engine.scheduler import Chunk, Scheduler, SchedulerConfig
from penstock.engine.sequence import Sequence
from penstock.engine.streaming import EventBuilder
from penstock.errors import ContextLengthExceeded
from penstock.types import TokenEvent

log = structlog.get_logger("penstock.engine")

Sink = Callable[[TokenEvent | Exception], None]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    block_size: int = 16
    kv_cache_tokens: int = 32_768
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int
    waiting: int
    free_blocks: int
    total_blocks: int
    kv_usage: float
    prefix_hit_rate: float
    preemptions: int


@dataclass(slots=True)
class Request:
    seq: Sequence
    events: EventBuilder
    sink: Sink


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        num_blocks = config.kv_cache_tokens // config.block_size
        self.cache = PagedKVCache(loaded.args, num_blocks, config.block_size, dtype=loaded.dtype, device=loaded.device)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(config.scheduler, self.blocks)
        self.runner = ModelRunner(loaded, self.cache)
        self.tokenizer = loaded.tokenizer
        self.requests: dict[int, Request] = {}
        per_token = PagedKVCache.bytes_per_token(loaded.args, loaded.dtype)
        log.info(
            "kv_cache",
            tokens=num_blocks * config.block_size,
            bytes=num_blocks * config.block_size * per_token,
            max_concurrent_seqs=config.scheduler.max_num_seqs,
        )

    def add(self, seq: Sequence, sink: Sink) -> None:
        if self.blocks.blocks_needed(len(seq) + seq.max_tokens) > len(self.blocks.blocks):
            raise ContextLengthExceeded(
                f"the prompt ({len(seq)} tokens) plus max_tokens ({seq.max_tokens}) exceeds the KV cache "
                f"({len(self.blocks.blocks) * self.blocks.block_size} tokens)",
                param="messages",
            )
        self.requests[seq.seq_id] = Request(seq, EventBuilder(self.tokenizer, seq.params), sink)
        self.scheduler.add(seq)

    def abort(self, seq_id: int) -> None:
        request = self.requests.pop(seq_id, None)
        if request is not None:
            self.scheduler.remove(request.seq)

    def fail_all(self, exc: Exception) -> None:
        for seq_id, request in list(self.requests.items()):
            self.abort(seq_id)
            request.sink(exc)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=self.scheduler.num_waiting,
            free_blocks=self.blocks.num_free,
            total_blocks=len(self.blocks.blocks),
            kv_usage=self.blocks.usage,
            prefix_hit_rate=self.blocks.stats.hit_rate,
            preemptions=self.scheduler.preemptions,
        )

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[Chunk]:
        chunks = self.scheduler.schedule()
        if chunks:
            logits = self.runner.run(chunks)
            self._advance(chunks, logits)
        return chunks

    def _advance(self, chunks: list[Chunk], logits: torch.Tensor) -> None:
        row = 0
        for chunk in chunks:
            seq = chunk.seq
            seq.num_computed += chunk.length
            if chunk.samples:
                self._emit(seq, sample(logits[row], seq.params, seq.rng))
                row += 1
            if seq.seq_id in self.requests:
                self.blocks.register(seq)

    def _emit(self, seq: Sequence, token: int) -> None:
        request = self.requests[seq.seq_id]
        seq.token_ids.append(token)
        event = request.events.event(token, last=seq.num_completion >= seq.max_tokens)
        if event.finish_reason is not None:
            self.blocks.register(seq)
            self.abort(seq.seq_id)
        request.sink(event)
