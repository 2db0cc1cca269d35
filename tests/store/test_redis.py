from __future__ import annotations

import pytest
from redis.asyncio import Redis

from penstock.errors import ConfigError
from penstock.store.redis import connect_redis, ping_redis, redis_alive
from tests.helpers import free_port


# The next two tests write the same key: each sees an empty server because the fixture flushes it.
@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_starts_from_an_empty_redis(redis_client: Redis, run: int) -> None:
    assert await redis_client.dbsize() == 0
    assert await redis_client.incr("counter") == 1
    await redis_client.set("run", run)


async def test_ping_redis_answers_true_for_the_test_server(redis_url: str, redis_client: Redis) -> None:
    assert await ping_redis(redis_url)
    assert await redis_alive(redis_client)


async def test_ping_redis_is_false_without_raising_when_nothing_listens() -> None:
    assert not await ping_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    assert not await ping_redis("not-a-url")


def test_connect_redis_rejects_a_malformed_url_without_leaking_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        connect_redis("http://:s3cret@cache:6379")
    assert "s3cret" not in caught.value.message
