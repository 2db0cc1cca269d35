"""Breaker evidence shared by gateway replicas through Redis (when REDIS_URL is set): a circuit one
replica opens is opened in every other within `interval_s`, so one replica's failed calls spare the rest
theirs. Each opening is published as its wall-clock time, with the breaker's `open_s` as its expiry; a
replica opens its own breaker for a published opening newer than its breaker's last change (so a
replica that has since closed it on a good probe is not sent back), then probes for itself as usual.
Redis being down changes nothing but this: every replica keeps its own breakers.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from penstock.router.breaker import BreakerState
from penstock.router.fleet import Fleet
from penstock.router.replicas import Replica

log = structlog.get_logger("penstock.router")
PREFIX = "penstock:breaker:"


class SharedBreakers:
    def __init__(self, redis: Redis, fleet: Fleet, interval_s: float = 0.25) -> None:
        self._redis = redis
        self._fleet = fleet
        self._interval_s = interval_s
        self._published: dict[tuple[str, str], int] = {}  # (deployment, replica) -> openings published
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="penstock-shared-breakers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
                self._failing = False
            except RedisError as exc:
                if not self._failing:
                    log.warning("shared_breakers_unreachable", error=str(exc) or type(exc).__name__)
                self._failing = True
            await asyncio.sleep(self._interval_s)

    async def sync(self) -> None:
        """Publish this replica's new openings, then take up the others'."""
        replicas = [(d.name, d.config.breaker.open_s, r) for d in self._fleet.remote for r in d.replicas.replicas]
        if not replicas:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, open_s, replica in replicas:
                if self._new_opening(name, replica):
                    pipe.set(_key(name, replica), repr(replica.breaker.changed_at), px=int(open_s * 1000))
            pipe.mget([_key(name, replica) for name, _, replica in replicas])
            *_, published = await pipe.execute()
        for (name, _, replica), opened_at in zip(replicas, published, strict=True):
            breaker = replica.breaker
            if opened_at is not None and breaker.state is BreakerState.CLOSED and float(opened_at) > breaker.changed_at:
                breaker.trip()
                self._published[name, replica.url] = breaker.opened  # theirs: not ours to publish again

    def _new_opening(self, name: str, replica: Replica) -> bool:
        breaker = replica.breaker
        if breaker.opened == self._published.get((name, replica.url), 0):
            return False
        self._published[name, replica.url] = breaker.opened
        return breaker.state is not BreakerState.CLOSED and time.time() - breaker.changed_at < 60


def _key(deployment: str, replica: Replica) -> str:
    return f"{PREFIX}{deployment}:{replica.url}"
