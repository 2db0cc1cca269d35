"""Rate limits as data: what one request asks of which buckets, and what the answer was.

Requests and tokens per minute use GCRA (the generic cell rate algorithm): a bucket of L units per
minute stores one number, its theoretical arrival time (TAT), and admits a cost c when
max(TAT, now) + c·(60/L) - now ≤ 60 s. That allows a burst of L at once and then L per minute,
exactly; a decision reads and writes each bucket once, so it is atomic in one Lua script.
Concurrency is a set of in-flight request ids per scope; an id older than the lease is dropped, so
a replica that dies mid-request cannot hold a slot for ever.

Both backends (in process, Redis) implement the same arithmetic; `gcra` is the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from penstock.types import Caller

PERIOD_S = 60.0
Kind = Literal["requests", "tokens"]
RATELIMIT_HEADERS = tuple(
    f"{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset")
)


@dataclass(frozen=True, slots=True)
class Rate:
    """One GCRA bucket: `limit` units per minute; this request costs `cost` of them."""

    key: str
    kind: Kind
    limit: int
    cost: int

    @property
    def interval_s(self) -> float:
        return PERIOD_S / self.limit


@dataclass(frozen=True, slots=True)
class Slots:
    """A cap of `limit` requests in flight at once for one key or tenant."""

    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class Ask:
    request_id: str
    rates: tuple[Rate, ...]
    slots: tuple[Slots, ...]

    def shared(self, replicas: int) -> Ask:
        """This replica's share of every limit: what fail-open enforces while Redis is away."""
        if replicas <= 1:
            return self
        return Ask(
            self.request_id,
            tuple(replace(r, limit=max(1, r.limit // replicas)) for r in self.rates),
            tuple(replace(s, limit=max(1, s.limit // replicas)) for s in self.slots),
        )


@dataclass(frozen=True, slots=True)
class RateState:
    """A bucket after the decision: what is left and when it is full again."""

    rate: Rate
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float
    states: tuple[RateState, ...]
    refused_by: str | None = None  # "requests", "tokens" or "concurrency"


@dataclass(frozen=True, slots=True)
class GcraResult:
    allowed: bool
    tat: float  # the bucket's TAT after the decision
    remaining: int
    reset_s: float
    retry_after_s: float


def gcra(tat: float | None, now: float, rate: Rate) -> GcraResult:
    start = now if tat is None or tat < now else tat
    new_tat = start + rate.cost * rate.interval_s
    excess = new_tat - now - PERIOD_S
    if excess > 1e-9:
        return GcraResult(False, start, remaining(start - now, rate), start - now, excess)
    return GcraResult(True, new_tat, remaining(new_tat - now, rate), new_tat - now, 0.0)


def remaining(used_s: float, rate: Rate) -> int:
    """Units left in a bucket whose TAT lies `used_s` ahead of now."""
    return max(0, math.floor((PERIOD_S - used_s) / rate.interval_s + 1e-9))


class Backend(Protocol):
    name: str

    async def decide(self, ask: Ask) -> Decision:
        """All of the ask's buckets and slots, or none of them."""
        ...

    async def refund(self, rates: Sequence[Rate]) -> None:
        """Give back `cost` units of each bucket (negative: take more), as when a request used fewer tokens."""
        ...

    async def release(self, slots: Sequence[Slots], request_id: str) -> None: ...


def ask_for(caller: Caller, request_id: str, tokens: int, prefix: str = "penstock:rl") -> Ask:
    """The buckets a request draws on: its key's and its tenant's, for requests, tokens and concurrency."""
    scopes = (
        (f"{prefix}:key:{caller.key_id}", caller.scopes.limits),
        (f"{prefix}:tenant:{caller.tenant}", caller.tenant_limits),
    )
    rates: list[Rate] = []
    slots: list[Slots] = []
    for scope, limits in scopes:
        if limits.rpm is not None:
            rates.append(Rate(f"{scope}:rpm", "requests", limits.rpm, 1))
        if limits.tpm is not None:
            rates.append(Rate(f"{scope}:tpm", "tokens", limits.tpm, tokens))
        if limits.max_concurrent is not None:
            slots.append(Slots(f"{scope}:inflight", limits.max_concurrent))
    return Ask(request_id, tuple(rates), tuple(slots))


def ratelimit_headers(states: Sequence[RateState]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, from the tightest bucket of each kind."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        ours = [s for s in states if s.rate.kind == kind]
        if not ours:
            continue
        tightest = min(ours, key=lambda s: (s.remaining, -s.reset_s))
        headers[f"x-ratelimit-limit-{kind}"] = str(tightest.rate.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(tightest.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = duration(tightest.reset_s)
    return headers


def duration(seconds: float) -> str:
    """As OpenAI writes resets: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
