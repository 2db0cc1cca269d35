"""Redis: the counters several gateway replicas share (rate limits, quotas, breaker state)."""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from penstock.errors import ConfigError
from penstock.store.urls import mask_password


def connect_redis(url: str, *, timeout_s: float = 2.0, max_connections: int = 64) -> Redis:
    """A client for `url` (redis:// or rediss://); redis-py connects lazily, on the first command.

    Short socket timeouts keep a slow Redis from stalling requests on the hot path. The pool makes a
    burst of requests wait for a free connection (up to `timeout_s`) rather than fail at once.
    """
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
        )
        return Redis(connection_pool=pool)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_password(url)}: {exc}") from exc


async def redis_alive(client: Redis, *, timeout_s: float = 1.0) -> bool:
    """Whether `client`'s server answers PING within `timeout_s`; never raises (for /readyz)."""
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False


async def ping_redis(url: str, *, timeout_s: float = 1.0) -> bool:
    """Whether the Redis at `url` answers PING within `timeout_s`; never raises, even for a bad URL."""
    try:
        client = connect_redis(url, timeout_s=timeout_s)
    except ConfigError:
        return False
    try:
        return await redis_alive(client, timeout_s=timeout_s)
    finally:
        await client.aclose()
