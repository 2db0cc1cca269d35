"""What the engine reports as it runs, for metrics to record: one record per step, one per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StepRecord:
    seconds: float
    batch_size: int  # sequences in the step
    prefill_tokens: int
    decode_tokens: int
    preemptions: int  # in this step
    prefix_queried_tokens: int  # in this step's admissions
    prefix_hit_tokens: int


@dataclass(frozen=True, slots=True)
class StateRecord:
    """The engine's load after a step or an abort."""

    running: int
    waiting: int
    kv_usage: float  # fraction of blocks in use


@dataclass(frozen=True, slots=True)
class RequestRecord:
    queue_seconds: float  # arrival → first scheduled
    ttft_seconds: float  # arrival → first token
    prefill_seconds: float  # first scheduled → first token
    decode_seconds: float  # first token → last token
    output_tokens: int
    finish_reason: str


class EngineObserver(Protocol):
    def on_step(self, record: StepRecord) -> None: ...

    def on_state(self, record: StateRecord) -> None: ...

    def on_token_gap(self, seconds: float) -> None:
        """Time between two tokens of one sequence (inter-token latency)."""

    def on_finish(self, record: RequestRecord) -> None: ...


class NullObserver:
    def on_step(self, record: StepRecord) -> None:
        pass

    def on_state(self, record: StateRecord) -> None:
        pass

    def on_token_gap(self, seconds: float) -> None:
        pass

    def on_finish(self, record: RequestRecord) -> None:
        pass
