"""One generation's state as the engine tracks it: its tokens, its KV blocks, how far it has got."""

from __future__ import annotations

import time
from enum import Enum, IntEnum
from itertools import count
from typing import Protocol

import torch
from torch import Tensor

from penstock.types import SamplingParams


class Priority(IntEnum):
    """Lower runs first: interactive requests go before batch jobs; FCFS within a class."""

    INTERACTIVE = 0
    BATCH = 1


class TokenMask(Protocol):
    """Grammar-constrained decoding: the tokens a sequence may sample next (None: any)."""

    def __call__(self, seq: Sequence) -> Tensor | None: ...

    def fork(self) -> TokenMask:
        """The same constraint at the same point, for another choice that goes its own way."""
        ...


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    _ids = count()

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        *,
        max_tokens: int,
        rng: torch.Generator,
        priority: Priority = Priority.INTERACTIVE,
        adapter: str | None = None,
        arrival: float | None = None,
    ) -> None:
        self.seq_id = next(Sequence._ids)
        self.token_ids = list(prompt)
        self.prompt_len = len(prompt)
        self.params = params
        self.max_tokens = max_tokens
        self.rng = rng
        self.priority = priority
        self.adapter = adapter
        self.arrival = time.monotonic() if arrival is None else arrival
        self.status = Status.WAITING
        self.block_table: list[int] = []
        self.block_keys: list[int] = []  # prefix-cache keys of the leading full, computed blocks
        self.num_computed = 0  # tokens whose keys and values are in the cache
        self.num_cached = 0  # of those, how many came from the prefix cache at admission
        self.preemptions = 0
        self.token_mask: TokenMask | None = None
        self.index = 0  # which of the request's n choices
        self.first_scheduled: float | None = None  # monotonic times, for the engine's metrics
        self.last_token_at: float | None = None
        self.first_token_at: float | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_completion(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    def order(self) -> tuple[int, float, int]:
        """Scheduling order: priority class, then arrival."""
        return (self.priority, self.arrival, self.seq_id)

    def fork(self, index: int, rng: torch.Generator) -> Sequence:
        """Another choice of the same request, at the same point: same tokens, its own randomness."""
        child = Sequence(
            self.token_ids,
            self.params,
            max_tokens=self.max_tokens,
            rng=rng,
            priority=self.priority,
            adapter=self.adapter,
            arrival=self.arrival,
        )
        child.prompt_len = self.prompt_len
        child.token_mask = self.token_mask.fork() if self.token_mask else None
        child.index = index
        return child

    def reset_for_recompute(self) -> None:
        """Preempted: its blocks are gone; prompt and generated tokens are recomputed on readmission."""
        self.block_table = []
        self.block_keys = []
        self.num_computed = 0
        self.num_cached = 0
        self.status = Status.WAITING
        self.preemptions += 1
