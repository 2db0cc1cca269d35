"""Seeded benchmark workloads made of real text: the standard library's own source, tokenized and sliced.

Random token ids would make attention degenerate; sliced real text behaves like real prompts.
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from penstock.engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class BenchRequest:
    prompt: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Sizes of every part of the benchmark; ranges are inclusive and drawn uniformly."""

    requests: int = 64
    prompt_len: tuple[int, int] = (64, 512)
    output_len: tuple[int, int] = (32, 256)
    single_prompt: int = 128
    single_new: int = 128
    prefix_len: int = 1024
    prefix_requests: int = 16
    suffix_len: int = 32
    hf_batches: tuple[int, ...] = (8, 16, 32, 64)
    answer_prompts: int = 56  # chat prompts whose greedy answers are held against fp32's (bench/answers.py)


FULL = WorkloadSpec()
QUICK = WorkloadSpec(
    requests=8,
    prompt_len=(32, 128),
    output_len=(16, 48),
    single_prompt=64,
    single_new=32,
    prefix_len=256,
    prefix_requests=4,
    suffix_len=16,
    hf_batches=(8,),
    answer_prompts=16,
)


@dataclass(frozen=True, slots=True)
class Workload:
    throughput: tuple[BenchRequest, ...]  # all submitted at once, in this (arrival) order
    single: BenchRequest
    warmup: BenchRequest  # the shared prefix with a suffix of its own: fills the prefix cache
    prefixed: tuple[BenchRequest, ...]  # the shared prefix, then a distinct suffix each; one token out

    @property
    def requested_tokens(self) -> int:
        return sum(r.max_tokens for r in self.throughput)


def build_workload(spec: WorkloadSpec, tokenizer: Tokenizer, seed: int) -> Workload:
    rng = random.Random(seed)
    pool = text_tokens(tokenizer, 100_000)
    throughput = tuple(
        BenchRequest(_slice(pool, rng.randint(*spec.prompt_len), rng), rng.randint(*spec.output_len))
        for _ in range(spec.requests)
    )
    prefix = _slice(pool, spec.prefix_len, rng)
    prefixed = [BenchRequest(prefix + _slice(pool, spec.suffix_len, rng), 1) for _ in range(spec.prefix_requests + 1)]
    single = BenchRequest(_slice(pool, spec.single_prompt, rng), spec.single_new)
    return Workload(throughput, single, prefixed[0], tuple(prefixed[1:]))


def text_tokens(tokenizer: Tokenizer, count: int) -> list[int]:
    """At least `count` token ids of the stdlib's top-level modules, read in name order."""
    tokens: list[int] = []
    for text in _stdlib_sources():
        tokens += tokenizer.encode(text)
        if len(tokens) >= count:
            return tokens
    raise RuntimeError(f"the standard library holds fewer than {count} tokens of source")


def _stdlib_sources() -> Iterator[str]:
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        yield path.read_text(encoding="utf-8", errors="replace")


def _slice(pool: list[int], length: int, rng: random.Random) -> tuple[int, ...]:
    start = rng.randrange(len(pool) - length)
    return tuple(pool[start : start + length])
