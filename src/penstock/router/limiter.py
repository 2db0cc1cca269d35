"""Admission by rate limit: decide before any work, give back what was not used after it.

With Redis the decision is shared by every replica. When Redis cannot be reached the configured
policy decides: fail_open (the default) falls back to this process, enforcing limit ÷ replicas so
that the replicas together stay near the limit, and says so in the logs and the
`penstock_rate_limiter_degraded` gauge; fail_closed answers 503. Redis is tried again after
`retry_s`, so one outage costs one timeout per second, not one per request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import structlog
from redis.exceptions import RedisError

from penstock.errors import DependencyUnavailable, RateLimited
from penstock.observability.gateway_metrics import GatewayMetrics
from penstock.router.limiter_local import LocalBackend
from penstock.router.rate_limits import PERIOD_S, Ask, Backend, Decision, ask_for, ratelimit_headers
from penstock.types import Caller

log = structlog.get_logger("penstock.limits")


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request's claim on its buckets, to settle when it ends."""

    ask: Ask
    backend: Backend | None  # None: no limit applied
    headers: dict[str, str] = field(default_factory=dict)


class RateLimiter:
    def __init__(
        self,
        backend: Backend,
        metrics: GatewayMetrics,
        *,
        fallback: LocalBackend | None = None,
        fail_open: bool = True,
        replicas: int = 1,
        retry_s: float = 1.0,
    ) -> None:
        """`fallback` is used while `backend` (Redis) fails, when `fail_open`."""
        self._backend = backend
        self._fallback = fallback
        self._fail_open = fail_open
        self._replicas = replicas
        self._retry_s = retry_s
        self._metrics = metrics
        self._retry_at = 0.0
        self._degraded = False
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(self, caller: Caller, request_id: str, tokens: int) -> Ticket:
        """Admit the request with `tokens` reserved (prompt + max_tokens), or raise RateLimited."""
        ask = ask_for(caller, request_id, tokens)
        if not ask.rates and not ask.slots:
            return Ticket(ask, None)
        for rate in ask.rates:
            if rate.cost > rate.limit:  # could never pass, however long the client waits
                raise RateLimited(
                    f"this request needs {rate.cost} {rate.kind} and the limit is {rate.limit} per minute; "
                    "lower max_tokens or shorten the prompt",
                    retry_after_s=PERIOD_S,
                    code="request_too_large",
                )
        backend, ask = self._choose(ask)
        decision = await self._decide(backend, ask)
        headers = ratelimit_headers(decision.states)
        self._metrics.rate_limit_decisions.labels(backend.name, "allowed" if decision.allowed else "limited").inc()
        if not decision.allowed:
            raise RateLimited(_message(decision), retry_after_s=decision.retry_after_s, headers=headers)
        return Ticket(ask, backend, headers)

    def finish(self, ticket: Ticket, used_tokens: int) -> None:
        """Settle off the response path: refund reserved tokens not used, free the in-flight slot."""
        if ticket.backend is None:
            return
        task = asyncio.create_task(self._settle(ticket, used_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait for pending settlements (at shutdown, and in tests)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _settle(self, ticket: Ticket, used_tokens: int) -> None:
        assert ticket.backend is not None
        unused = [replace(r, cost=r.cost - used_tokens) for r in ticket.ask.rates if r.kind == "tokens"]
        try:
            await ticket.backend.refund([r for r in unused if r.cost])
            await ticket.backend.release(ticket.ask.slots, ticket.ask.request_id)
        except (RedisError, OSError) as exc:  # the lease frees the slot; the refund is lost
            log.warning("rate_limit_settle_failed", error=str(exc) or type(exc).__name__)

    def _choose(self, ask: Ask) -> tuple[Backend, Ask]:
        if self._fallback is None or time.monotonic() >= self._retry_at:
            return self._backend, ask
        return self._degrade(ask)

    async def _decide(self, backend: Backend, ask: Ask) -> Decision:
        if backend is not self._backend:
            return await backend.decide(ask)
        try:
            decision = await backend.decide(ask)
        except (RedisError, OSError) as exc:
            if self._fallback is None:
                raise
            self._retry_at = time.monotonic() + self._retry_s
            if not self._degraded:
                log.warning("rate_limiter_degraded", error=str(exc) or type(exc).__name__, fail_open=self._fail_open)
            self._set_degraded(True)
            fallback, shared = self._degrade(ask)
            return await fallback.decide(shared)
        if self._degraded:
            log.info("rate_limiter_recovered")
            self._set_degraded(False)
        return decision

    def _degrade(self, ask: Ask) -> tuple[Backend, Ask]:
        if not self._fail_open or self._fallback is None:
            raise DependencyUnavailable("rate limiting is unavailable (Redis is unreachable); try again shortly")
        return self._fallback, ask.shared(self._replicas)

    def _set_degraded(self, degraded: bool) -> None:
        self._degraded = degraded
        self._metrics.limiter_degraded.set(1 if degraded and self._fail_open else 0)


def _message(decision: Decision) -> str:
    if decision.refused_by == "concurrency":
        return "too many requests in flight for this key or tenant; retry when one finishes"
    return f"rate limit reached for {decision.refused_by} per minute; retry after {decision.retry_after_s:.1f}s"
