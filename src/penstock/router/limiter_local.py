"""Rate limits in this process: exact for one gateway, and the fail-open fallback when Redis is away.

The event loop runs one coroutine at a time and `decide` never awaits, so a decision is atomic
without a lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from penstock.router.rate_limits import Ask, Decision, Rate, RateState, Slots, gcra, remaining


class LocalBackend:
    name = "local"

    def __init__(self, *, lease_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._tats: dict[str, float] = {}
        self._inflight: dict[str, dict[str, float]] = {}  # scope → request id → admitted at
        self._lease_s = lease_s
        self._clock = clock

    async def decide(self, ask: Ask) -> Decision:
        now = self._clock()
        results = [gcra(self._tats.get(rate.key), now, rate) for rate in ask.rates]
        states = tuple(RateState(r, g.remaining, g.reset_s) for r, g in zip(ask.rates, results, strict=True))
        refused = [(g.retry_after_s, r.kind) for r, g in zip(ask.rates, results, strict=True) if not g.allowed]
        if refused:
            retry, kind = max(refused)
            return Decision(False, retry, tuple(self._unchanged(r, now) for r in ask.rates), kind)
        if any(len(self._live(s.key, now)) >= s.limit for s in ask.slots):
            return Decision(False, 1.0, states, "concurrency")
        for rate, result in zip(ask.rates, results, strict=True):
            self._tats[rate.key] = result.tat
        for slots in ask.slots:
            self._live(slots.key, now)[ask.request_id] = now
        return Decision(True, 0.0, states)

    async def refund(self, rates: Sequence[Rate]) -> None:
        now = self._clock()
        for rate in rates:
            if rate.key in self._tats:
                self._tats[rate.key] = max(now, self._tats[rate.key] - rate.cost * rate.interval_s)

    async def release(self, slots: Sequence[Slots], request_id: str) -> None:
        for s in slots:
            self._inflight.get(s.key, {}).pop(request_id, None)

    def _unchanged(self, rate: Rate, now: float) -> RateState:
        """A bucket as it stands, for a refused request that charged nothing."""
        used = max(0.0, self._tats.get(rate.key, now) - now)
        return RateState(rate, remaining(used, rate), used)

    def _live(self, key: str, now: float) -> dict[str, float]:
        inflight = self._inflight.setdefault(key, {})
        for request_id in [r for r, since in inflight.items() if now - since > self._lease_s]:
            del inflight[request_id]
        return inflight
