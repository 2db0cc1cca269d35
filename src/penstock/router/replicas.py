"""A remote deployment's replicas and which one takes a request.

Least outstanding requests, with prefix affinity: a prompt's leading tokens hash to a point on a ring
(consistent hashing, 64 virtual nodes per replica), and the request goes to the first replica clockwise
whose in-flight count stays within `balance_bound` x the mean if it takes one more (Mirrokni, Thorup and
Zadimoghaddam's consistent hashing with bounded loads). Prompts that share their opening (a system prompt,
a document, a conversation so far) so meet the same replica's prefix cache, every gateway replica picks
alike without sharing state, and no replica takes more than its bound of the load.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from penstock.config import BreakerConfig
from penstock.router.breaker import BreakerState, CircuitBreaker

VIRTUAL_NODES = 64


@dataclass(eq=False, slots=True)
class Replica:
    url: str
    breaker: CircuitBreaker
    max_concurrency: int
    in_flight: int = 0
    calls: int = 0
    failures: int = 0
    healthy: bool = True  # the last health check's verdict

    @property
    def name(self) -> str:
        return self.url

    def available(self) -> bool:
        return self.in_flight < self.max_concurrency and self.breaker.available()


class ReplicaSet:
    def __init__(
        self, urls: Sequence[str], breaker: BreakerConfig, max_concurrency: int, balance_bound: float = 1.25
    ) -> None:
        self.replicas = tuple(Replica(url, CircuitBreaker(breaker), max_concurrency) for url in urls)
        self._bound = balance_bound
        points = sorted(
            (_hash(f"{r.url}#{i}".encode()), n) for n, r in enumerate(self.replicas) for i in range(VIRTUAL_NODES)
        )
        self._ring_keys = [p for p, _ in points]
        self._ring_owners = [n for _, n in points]
        self._turn = 0

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def pick(self, affinity: bytes | None, tried: frozenset[str] = frozenset()) -> tuple[Replica, str] | None:
        """The replica for a request and why (probe, affinity or least_loaded); None if none may take it now."""
        open_ = [r for r in self.replicas if r.url not in tried and r.available()]
        if not open_:
            return None
        probing = next((r for r in open_ if r.breaker.state is BreakerState.HALF_OPEN), None)
        if probing is not None:  # its probe goes first, or a replica that prefixes skip would never come back
            return probing, "probe"
        if affinity is not None:
            bound = math.ceil(self._bound * (self.in_flight + 1) / len(open_))
            for replica in self._clockwise(_hash(affinity)):
                if replica in open_ and replica.in_flight + 1 <= bound:
                    return replica, "affinity"
        least = min(r.in_flight for r in open_)
        tied = [r for r in open_ if r.in_flight == least]
        self._turn += 1
        return tied[self._turn % len(tied)], "least_loaded"

    def _clockwise(self, point: int) -> list[Replica]:
        """Each replica once, in the order the ring meets them from `point` on."""
        start = bisect.bisect(self._ring_keys, point)
        seen: list[Replica] = []
        for i in range(len(self._ring_owners)):
            replica = self.replicas[self._ring_owners[(start + i) % len(self._ring_owners)]]
            if replica not in seen:
                seen.append(replica)
                if len(seen) == len(self.replicas):
                    break
        return seen


def affinity_key(token_ids: Sequence[int], tokens: int, block: int = 16) -> bytes | None:
    """The prompt's first `tokens` tokens, cut to whole blocks (the unit prefix caches share); None for a
    prompt shorter than one block, which has nothing worth keeping warm."""
    length = min(len(token_ids), tokens) // block * block
    if tokens <= 0 or length == 0:
        return None
    return b"".join(t.to_bytes(4, "little") for t in token_ids[:length])


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
