"""Penstock's side of the benchmark: the synchronous LLMEngine, driven on the calling thread.

No AsyncEngine: torch on a second thread brings a second OpenMP pool, and both sides of the
comparison must run on the same, single thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import structlog

from penstock.bench.progress import NoProgress, Progress
from penstock.bench.workload import BenchRequest
from penstock.engine.kernels import Determinism
from penstock.engine.kernels.kernel_choice import AttentionChoice
from penstock.engine.llm_engine import EngineConfig, LLMEngine
from penstock.engine.loader import LoadedModel
from penstock.engine.sampler import request_rng
from penstock.engine.sequence import Sequence
from penstock.types import SamplingParams, TokenEvent

log = structlog.get_logger("penstock.bench")
BLOCK_SIZE = EngineConfig().block_size


@dataclass(slots=True)
class Tracker:
    """One request's sink: what it received, and when."""

    max_tokens: int
    progress: Progress
    submitted: float = 0.0
    token_times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    error: Exception | None = None

    def __call__(self, item: TokenEvent | Exception) -> None:
        if isinstance(item, Exception):
            self.error = item
            return
        now = time.perf_counter()
        self.token_times += [now] * len(item.token_ids)
        self.token_ids += item.token_ids
        self.finished = item.finish_reason is not None
        self.progress.advance(len(item.token_ids))

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.finished

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.submitted if self.token_times else float("nan")

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second after the first: the decode phase alone."""
        times = self.token_times
        return (len(times) - 1) / (times[-1] - times[0])


@dataclass(frozen=True, slots=True)
class EngineRun:
    trackers: tuple[Tracker, ...]
    wall_s: float
    preemptions: int
    prefix_hit_rate: float

    @property
    def output_tokens(self) -> int:
        return sum(t.tokens for t in self.trackers)

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.trackers)

    @property
    def early_stops(self) -> int:
        """Requests that finished before their max_tokens (the model emitted eos)."""
        return sum(t.finished and t.tokens < t.max_tokens for t in self.trackers)

    @property
    def mean_ttft_s(self) -> float:
        return sum(t.ttft_s for t in self.trackers) / len(self.trackers)


def kv_tokens_for(requests: Seq[BenchRequest], fraction: float = 1.0) -> int:
    """A KV cache holding `fraction` of what every request needs at once, and never less than the largest."""
    blocks = [-(-(len(r.prompt) + r.max_tokens) // BLOCK_SIZE) for r in requests]
    return max(round(fraction * sum(blocks)), max(blocks)) * BLOCK_SIZE


def new_engine(
    loaded: LoadedModel,
    kv_tokens: int,
    attention: AttentionChoice | None = None,
    *,
    prefix_caching: bool = True,
    determinism: Determinism = "batch_invariant",
) -> LLMEngine:
    """An engine with the benchmark's block size; no attention choice: the model's dtype and SDPA."""
    kv_dtype, native = (attention.kv_dtype, attention.native) if attention else (None, False)
    config = EngineConfig(BLOCK_SIZE, kv_tokens, kv_dtype, prefix_caching, determinism, native)
    return LLMEngine(loaded, config)


def run(engine: LLMEngine, requests: Seq[BenchRequest], progress: Progress | None = None) -> EngineRun:
    """Submit every request at once, then step until the engine is idle."""
    progress = progress or NoProgress()
    before = engine.stats().preemptions
    start = time.perf_counter()
    trackers = tuple(_submit(engine, r, progress) for r in requests)
    while engine.has_work():
        _step(engine)
    wall_s = time.perf_counter() - start
    stats = engine.stats()
    return EngineRun(trackers, wall_s, stats.preemptions - before, stats.prefix_hit_rate)


def single_stream_tok_s(
    loaded: LoadedModel,
    request: BenchRequest,
    attention: AttentionChoice | None = None,
    determinism: Determinism = "batch_invariant",
) -> float:
    """Decode tokens per second of one request alone, time to first token excluded."""
    engine = new_engine(loaded, kv_tokens_for([request]), attention, determinism=determinism)
    return run(engine, [request]).trackers[0].decode_tok_s


def prefix_ttft_s(
    loaded: LoadedModel,
    warmup: BenchRequest,
    prefixed: Seq[BenchRequest],
    attention: AttentionChoice | None = None,
    determinism: Determinism = "batch_invariant",
) -> tuple[float, float]:
    """Mean time to first token of the prefixed requests, all submitted at once: without prefix caching,
    then with the shared prefix already cached.

    Not "with an empty cache": the first request to compute the prefix would fill it for the rest
    within the same run, so that run measures the cache's in-flight sharing, not a cold start.
    """
    kv_tokens = kv_tokens_for([warmup, *prefixed])
    cold_engine = new_engine(loaded, kv_tokens, attention, prefix_caching=False, determinism=determinism)
    cold = run(cold_engine, prefixed).mean_ttft_s
    engine = new_engine(loaded, kv_tokens, attention, determinism=determinism)
    run(engine, [warmup])
    return cold, run(engine, prefixed).mean_ttft_s


def _submit(engine: LLMEngine, request: BenchRequest, progress: Progress) -> Tracker:
    tracker = Tracker(request.max_tokens, progress, submitted=time.perf_counter())
    # Greedy, no stop ids of our own; the model's eos still ends a request (counted as an early stop).
    params = SamplingParams(max_tokens=request.max_tokens, temperature=0.0)
    seq = Sequence(
        list(request.prompt), params, max_tokens=request.max_tokens, rng=request_rng(0, engine.runner.loaded.device)
    )
    try:
        engine.add(seq, tracker)
    except Exception as exc:  # refused (too long for the cache): a failed request, not a failed run
        tracker.error = exc
    return tracker


def _step(engine: LLMEngine) -> None:
    try:
        engine.step()
    except Exception as exc:  # as the serving loop does: fail what was running, count it
        log.exception("engine_step_failed")
        engine.fail_all(exc)
