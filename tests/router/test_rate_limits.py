"""GCRA and concurrency limits: the arithmetic, the in-process backend, and Redis giving the same answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from penstock.identity import KeyScopes, RateLimits, TenantLimits
from penstock.router.limiter_local import LocalBackend
from penstock.router.limiter_redis import RedisBackend
from penstock.router.rate_limits import (
    Ask,
    Backend,
    Rate,
    RateState,
    Slots,
    ask_for,
    duration,
    gcra,
    ratelimit_headers,
)
from penstock.store.redis import connect_redis
from penstock.types import Caller


def rpm(limit: int, key: str = "k:rpm") -> Rate:
    return Rate(key, "requests", limit, 1)


def test_gcra_allows_a_burst_of_the_limit_then_one_per_interval() -> None:
    rate, tat, now = rpm(6), None, 100.0  # one every 10 s
    for left in range(5, -1, -1):
        result = gcra(tat, now, rate)
        assert result.allowed and result.remaining == left
        tat = result.tat
    refused = gcra(tat, now, rate)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(10.0)
    assert gcra(tat, now + 10.0, rate).allowed
    assert not gcra(tat, now + 9.9, rate).allowed


def test_gcra_charges_a_token_cost_and_refuses_what_does_not_fit() -> None:
    first = gcra(None, 0.0, Rate("k:tpm", "tokens", 1000, 700))
    assert first.allowed and first.remaining == 300
    second = gcra(first.tat, 0.0, Rate("k:tpm", "tokens", 1000, 400))
    assert not second.allowed and second.retry_after_s == pytest.approx(6.0)  # 100 tokens at 1000/min


def test_durations_read_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0.02, 1.5, 6.0, 360.0, 61.25)] == ["20ms", "1.5s", "6s", "6m0s", "1m1.25s"]


def test_headers_report_the_tightest_bucket_of_each_kind() -> None:
    states = [
        RateState(rpm(100, "key"), 40, 2.0),
        RateState(rpm(10, "tenant"), 3, 5.0),
        RateState(Rate("t", "tokens", 5000, 10), 4990, 0.12),
    ]
    assert ratelimit_headers(states) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "5s",
        "x-ratelimit-limit-tokens": "5000",
        "x-ratelimit-remaining-tokens": "4990",
        "x-ratelimit-reset-tokens": "120ms",
    }


def test_a_request_draws_on_its_keys_and_its_tenants_buckets() -> None:
    caller = Caller(
        "key_1",
        "acme",
        scopes=KeyScopes(limits=RateLimits(rpm=5, max_concurrent=2)),
        tenant_limits=TenantLimits(tpm=1000),
    )
    ask = ask_for(caller, "req", tokens=300)
    assert [(r.key, r.kind, r.limit, r.cost) for r in ask.rates] == [
        ("penstock:rl:key:key_1:rpm", "requests", 5, 1),
        ("penstock:rl:tenant:acme:tpm", "tokens", 1000, 300),
    ]
    assert ask.slots == (Slots("penstock:rl:key:key_1:inflight", 2),)
    assert ask_for(Caller("admin", "default"), "req", 10) == Ask("req", (), ())


def test_a_replicas_share_divides_every_limit() -> None:
    ask = Ask("r", (rpm(10),), (Slots("s", 4),)).shared(3)
    assert ask.rates[0].limit == 3 and ask.slots[0].limit == 1


@pytest.fixture(params=["local", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "local":
        yield LocalBackend()
        return
    client = connect_redis(request.getfixturevalue("redis_url"))
    await client.flushall()
    yield RedisBackend(client)
    await client.aclose()


async def test_exactly_the_limit_of_ten_times_as_many_concurrent_attempts_pass(backend: Backend) -> None:
    limit = 20
    decisions = await asyncio.gather(*(backend.decide(Ask(f"r{i}", (rpm(limit),), ())) for i in range(10 * limit)))
    assert sum(d.allowed for d in decisions) == limit
    refused = [d for d in decisions if not d.allowed]
    assert all(d.refused_by == "requests" and 0 < d.retry_after_s <= 3.0 for d in refused)


async def test_a_decision_takes_all_its_buckets_or_none(backend: Backend) -> None:
    key, tenant = rpm(100, "key"), rpm(1, "tenant")
    assert (await backend.decide(Ask("a", (key, tenant), ()))).allowed
    refused = await backend.decide(Ask("b", (key, tenant), ()))
    assert not refused.allowed
    assert refused.states[0].remaining == 99  # the key's bucket was not charged for the refused request


async def test_in_flight_slots_cap_concurrency_and_free_on_release(backend: Backend) -> None:
    slots = (Slots("inflight", 2),)
    assert [(await backend.decide(Ask(r, (), slots))).allowed for r in ("a", "b", "c")] == [True, True, False]
    assert (await backend.decide(Ask("c", (), slots))).refused_by == "concurrency"
    await backend.release(slots, "a")
    assert (await backend.decide(Ask("c", (), slots))).allowed


async def test_a_refund_gives_back_unused_tokens(backend: Backend) -> None:
    reserve = Rate("tpm", "tokens", 1000, 900)
    assert (await backend.decide(Ask("a", (reserve,), ()))).allowed
    assert not (await backend.decide(Ask("b", (Rate("tpm", "tokens", 1000, 500),), ()))).allowed
    await backend.refund([Rate("tpm", "tokens", 1000, 800)])  # it used 100 of its 900
    decision = await backend.decide(Ask("b", (Rate("tpm", "tokens", 1000, 500),), ()))
    assert decision.allowed and 390 <= decision.states[0].remaining <= 400


async def test_redis_and_local_agree_on_remaining_and_reset(redis_client: Redis) -> None:
    local, remote = LocalBackend(), RedisBackend(redis_client)
    for cost in (1, 5, 20, 3):
        ask = Ask("x", (Rate("b", "tokens", 60, cost),), ())
        mine, theirs = await local.decide(ask), await remote.decide(ask)
        assert mine.allowed == theirs.allowed
        assert mine.states[0].remaining == theirs.states[0].remaining
        assert mine.states[0].reset_s == pytest.approx(theirs.states[0].reset_s, abs=0.05)


def test_a_stale_in_flight_slot_is_freed_after_its_lease() -> None:
    clock = [0.0]
    local = LocalBackend(lease_s=10.0, clock=lambda: clock[0])
    slots = (Slots("inflight", 1),)
    assert asyncio.run(local.decide(Ask("crashed", (), slots))).allowed
    assert not asyncio.run(local.decide(Ask("next", (), slots))).allowed
    clock[0] = 11.0
    assert asyncio.run(local.decide(Ask("next", (), slots))).allowed
