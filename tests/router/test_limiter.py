"""The limiter across processes and through Redis outages: exact when Redis is up, the configured
fallback while it is down, and back to Redis once it returns."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from penstock.errors import DependencyUnavailable, RateLimited
from penstock.identity import KeyScopes, RateLimits
from penstock.observability.gateway_metrics import GatewayMetrics
from penstock.router.limiter import RateLimiter
from penstock.router.limiter_local import LocalBackend
from penstock.router.limiter_redis import RedisBackend
from penstock.store.redis import connect_redis
from penstock.types import Caller
from tests.helpers import RedisServer

# One of three "gateway processes": wait for the common start, fire its attempts at once, print how many passed.
ATTEMPTS = """
import asyncio, sys, time
from penstock.router.limiter_redis import RedisBackend
from penstock.router.rate_limits import Ask, Rate
from penstock.store.redis import connect_redis

async def main(url, start, attempts, limit, name):
    backend = RedisBackend(connect_redis(url))
    await asyncio.sleep(max(0.0, start - time.time()))
    rate = Rate("penstock:rl:key:shared:rpm", "requests", limit, 1)
    asks = [Ask(f"{name}-{i}", (rate,), ()) for i in range(attempts)]
    decisions = await asyncio.gather(*(backend.decide(ask) for ask in asks))
    print(sum(d.allowed for d in decisions))

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
"""


def test_three_processes_sharing_redis_admit_exactly_the_limit(redis_url: str) -> None:
    limit, processes = 12, 3
    connect_redis(redis_url)  # a bad URL fails here, not in three children
    start = time.time() + 3.0  # every child is up and connected by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", ATTEMPTS, redis_url, str(start), str(10 * limit // processes), str(limit), f"p{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    admitted = [int(child.communicate(timeout=60)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert sum(admitted) == limit, admitted


CALLER = Caller("key_1", "acme", scopes=KeyScopes(limits=RateLimits(rpm=10)))


MakeLimiter = Callable[..., tuple[RateLimiter, GatewayMetrics]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
async def limiter_for(redis_server: RedisServer) -> AsyncIterator[MakeLimiter]:
    """Limiters over this test's own Redis, for two replicas, retrying Redis 0.1 s after a failure."""
    made: list[Redis] = []

    def make(*, fail_open: bool) -> tuple[RateLimiter, GatewayMetrics]:
        client = connect_redis(redis_server.url, timeout_s=0.25)
        metrics = GatewayMetrics(CollectorRegistry())
        limiter = RateLimiter(
            RedisBackend(client), metrics, fallback=LocalBackend(), fail_open=fail_open, replicas=2, retry_s=0.1
        )
        made.append(client)
        return limiter, metrics

    yield make
    for client in made:
        await client.aclose()


async def admitted(limiter: RateLimiter, attempts: int, tag: str) -> int:
    passed = 0
    for i in range(attempts):
        try:
            await limiter.admit(CALLER, f"{tag}-{i}", tokens=10)
            passed += 1
        except RateLimited:
            pass
    return passed


async def test_fail_open_enforces_this_replicas_share_and_recovers(
    limiter_for: MakeLimiter, redis_server: RedisServer
) -> None:
    limiter, metrics = limiter_for(fail_open=True)
    assert await admitted(limiter, 3, "up") == 3
    assert metrics.limiter_degraded._value.get() == 0

    redis_server.stop()
    assert await admitted(limiter, 20, "down") == 5  # rpm 10 across 2 replicas: 5 here
    assert metrics.limiter_degraded._value.get() == 1

    redis_server.start()  # a fresh, empty Redis on the same port
    await asyncio.sleep(0.15)
    assert await admitted(limiter, 20, "back") == 10
    assert metrics.limiter_degraded._value.get() == 0


async def test_fail_closed_refuses_with_503_while_redis_is_down(
    limiter_for: MakeLimiter, redis_server: RedisServer
) -> None:
    limiter, _ = limiter_for(fail_open=False)
    await limiter.admit(CALLER, "before", tokens=1)
    redis_server.stop()
    with pytest.raises(DependencyUnavailable):
        await limiter.admit(CALLER, "during", tokens=1)
    with pytest.raises(DependencyUnavailable):  # within retry_s: refused without waiting on Redis again
        await limiter.admit(CALLER, "during-2", tokens=1)
    redis_server.start()
    await asyncio.sleep(0.15)
    await limiter.admit(CALLER, "after", tokens=1)


async def test_a_request_larger_than_a_token_limit_is_refused_outright() -> None:
    caller = Caller("k", "t", scopes=KeyScopes(limits=RateLimits(tpm=100)))
    limiter = RateLimiter(LocalBackend(), GatewayMetrics(CollectorRegistry()))
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(caller, "r", tokens=101)
    assert refused.value.code == "request_too_large"


async def test_finish_refunds_unused_tokens_and_frees_the_slot() -> None:
    caller = Caller("k", "t", scopes=KeyScopes(limits=RateLimits(tpm=1000, max_concurrent=1)))
    limiter = RateLimiter(LocalBackend(), GatewayMetrics(CollectorRegistry()))
    ticket = await limiter.admit(caller, "a", tokens=900)
    assert ticket.headers["x-ratelimit-remaining-tokens"] == "100"
    with pytest.raises(RateLimited):
        await limiter.admit(caller, "b", tokens=10)  # the one slot is taken
    limiter.finish(ticket, used_tokens=100)
    await limiter.drain()
    second = await limiter.admit(caller, "b", tokens=500)
    assert 390 <= int(second.headers["x-ratelimit-remaining-tokens"]) <= 400
