"""The step loop: schedule, run the model, sample, stream — the engine on one screen.

Not thread-safe: one thread owns an LLMEngine (see async_engine for the thread that does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import torch

from penstock.engine.block_manager import BlockManager
from penstock.engine.kernels import Determinism, choose_forward
from penstock.engine.loader import LoadedModel
from penstock.engine.model_runner import ModelRunner
from penstock.engine.observer import EngineObserver, NullObserver, RequestRecord, StateRecord, StepRecord
from penstock.engine.paged_attention import PagedKVCache
from penstock.engine.sampler import Logprob, request_rng, sample_batch
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
    kv_dtype: torch.dtype | None = None  # None: the model's dtype
    prefix_caching: bool = True
    # batch_invariant: a token's numbers do not depend on what shares its step (kernels/batch_invariant.py);
    # fast: the kernels kernel_choice timed fastest, whose numbers may differ with the batch
    determinism: Determinism = "batch_invariant"
    native_attention: bool = False  # fast: attention through the native kernel (native.py), where it is built
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
    group: int  # the seq_id of the request's first choice; its n - 1 siblings fork from it
    forks_left: int = 0


def request_record(seq: Sequence, finish_reason: str) -> RequestRecord:
    scheduled = seq.first_scheduled or seq.arrival
    first, last = seq.first_token_at or scheduled, seq.last_token_at or scheduled
    return RequestRecord(
        queue_seconds=scheduled - seq.arrival,
        ttft_seconds=first - seq.arrival,
        prefill_seconds=first - scheduled,
        decode_seconds=last - first,
        output_tokens=seq.num_completion,
        finish_reason=finish_reason,
    )


def _nth_seed(seed: int | None, index: int) -> int | None:
    return None if seed is None else seed + index


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, observer: EngineObserver | None = None) -> None:
        self.observer = observer or NullObserver()
        num_blocks = config.kv_cache_tokens // config.block_size
        kv_dtype = config.kv_dtype or loaded.dtype
        self.cache = PagedKVCache(loaded.args, num_blocks, config.block_size, dtype=kv_dtype, device=loaded.device)
        self.blocks = BlockManager(num_blocks, config.block_size, prefix_caching=config.prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.blocks)
        forward = choose_forward(loaded, config.determinism, config.native_attention)
        self.runner = ModelRunner(loaded, self.cache, forward)
        self.tokenizer = loaded.tokenizer
        self.requests: dict[int, Request] = {}
        per_token = PagedKVCache.bytes_per_token(loaded.args, kv_dtype)
        log.info(
            "kv_cache",
            tokens=num_blocks * config.block_size,
            bytes=num_blocks * config.block_size * per_token,
            dtype=str(kv_dtype).removeprefix("torch."),
            forward=forward.name,
            max_concurrent_seqs=config.scheduler.max_num_seqs,
            full_context_seqs=num_blocks * config.block_size // loaded.args.max_seq_len,
        )

    def add(self, seq: Sequence, sink: Sink) -> None:
        if self.blocks.blocks_needed(len(seq) + seq.max_tokens) > len(self.blocks.blocks):
            raise ContextLengthExceeded(
                f"the prompt ({len(seq)} tokens) plus max_tokens ({seq.max_tokens}) exceeds the KV cache "
                f"({len(self.blocks.blocks) * self.blocks.block_size} tokens)",
                param="messages",
            )
        events = EventBuilder(self.tokenizer, seq.params)
        self.requests[seq.seq_id] = Request(seq, events, sink, group=seq.seq_id, forks_left=seq.params.n - 1)
        self.scheduler.add(seq)

    def abort(self, group: int) -> None:
        """Stop a request and every choice forked from it; their blocks are free at once."""
        for seq_id in [i for i, r in self.requests.items() if r.group == group]:
            self._finish(seq_id)
        self._report_state()

    def fail_all(self, exc: Exception) -> None:
        for seq_id, request in list(self.requests.items()):
            self._finish(seq_id)
            request.sink(exc)

    def _finish(self, seq_id: int) -> None:
        request = self.requests.pop(seq_id)
        self.scheduler.remove(request.seq)

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
        start, before = time.monotonic(), self._counters()
        chunks = self.scheduler.schedule()
        if chunks:
            logits = self.runner.run(chunks)
            self._advance(chunks, logits, start)
            self.observer.on_step(self._step_record(chunks, time.monotonic() - start, before))
            self._report_state()
        return chunks

    def _report_state(self) -> None:
        state = StateRecord(len(self.scheduler.running), self.scheduler.num_waiting, self.blocks.usage)
        self.observer.on_state(state)

    def _counters(self) -> tuple[int, int, int]:
        stats = self.blocks.stats
        return self.scheduler.preemptions, stats.queried_tokens, stats.hit_tokens

    def _step_record(self, chunks: list[Chunk], seconds: float, before: tuple[int, int, int]) -> StepRecord:
        preempted, queried, hits = (now - then for now, then in zip(self._counters(), before, strict=True))
        decode = sum(1 for c in chunks if c.length == 1 and c.start >= c.seq.prompt_len)
        return StepRecord(
            seconds=seconds,
            batch_size=len(chunks),
            prefill_tokens=sum(c.length for c in chunks) - decode,
            decode_tokens=decode,
            preemptions=preempted,
            prefix_queried_tokens=queried,
            prefix_hit_tokens=hits,
        )

    def _advance(self, chunks: list[Chunk], logits: torch.Tensor, started: float) -> None:
        for chunk in chunks:
            chunk.seq.num_computed += chunk.length
            chunk.seq.first_scheduled = chunk.seq.first_scheduled or started
        sampling = [c.seq for c in chunks if c.samples]
        rows = list(range(len(sampling)))
        for row, seq in enumerate(list(sampling)):
            forks = self._fork(seq)  # n > 1: the siblings draw their first token from the same logits
            sampling += forks
            rows += [row] * len(forks)
        for seq, (token, logprob) in zip(sampling, sample_batch(logits[rows], sampling), strict=True):
            self._emit(seq, token, logprob)
        for chunk in chunks:
            if chunk.seq.seq_id in self.requests:
                self.blocks.register(chunk.seq)

    def _emit(self, seq: Sequence, token: int, logprob: Logprob | None) -> None:
        request = self.requests[seq.seq_id]
        seq.token_ids.append(token)
        self._clock(seq)
        event = request.events.event(token, last=seq.num_completion >= seq.max_tokens, logprob=logprob)
        if event.finish_reason is not None:
            self.blocks.register(seq)
            self._finish(seq.seq_id)
            self.observer.on_finish(request_record(seq, event.finish_reason))
        request.sink(event)

    def _clock(self, seq: Sequence) -> None:
        now = time.monotonic()
        if seq.last_token_at is not None:
            self.observer.on_token_gap(now - seq.last_token_at)
        seq.first_token_at = seq.first_token_at or now
        seq.last_token_at = now

    def _fork(self, parent: Sequence) -> list[Sequence]:
        """The request's other n - 1 choices, sharing the prompt's blocks that the parent computed."""
        request = self.requests[parent.seq_id]
        forks, request.forks_left = request.forks_left, 0
        children = []
        for index in range(parent.params.n - forks, parent.params.n):
            child = parent.fork(index, request_rng(_nth_seed(parent.params.seed, index), self.runner.loaded.device))
            self.requests[child.seq_id] = Request(
                child, EventBuilder(self.tokenizer, child.params, index), request.sink, group=request.group
            )
            if not self.blocks.can_fork(parent):  # no block free for the tail: recompute, prefix cache helps
                self.scheduler.add(child)
                continue
            if copy := self.blocks.fork(parent, child):
                self.cache.copy_block(*copy)
            self.scheduler.start(child)
            children.append(child)
        return children
