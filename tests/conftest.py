"""Fixtures shared by the whole suite.

The model: the shipped SmolLM2 GGUF, loaded once per run.

PostgreSQL: one server per test run (embedded, or the one PENSTOCK_TEST_DATABASE_URL names) and a
fresh database per test, cloned from a template that already has every migration applied.
Redis: one real `redis-server` per test run, flushed before each test that uses it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from penstock.config import DEFAULT_MODEL_NAME
from penstock.engine.async_engine import AsyncEngine
from penstock.engine.loader import LoadedModel
from penstock.engine.locator import locate_chat_model
from penstock.observability.engine_metrics import EngineMetrics
from penstock.store.database import Database
from penstock.store.embedded import EmbeddedPostgres
from penstock.store.migrations import apply_migrations
from penstock.store.redis import connect_redis
from penstock.store.urls import with_database
from tests.helpers import RedisServer, scratch_database


@pytest.fixture(scope="session", autouse=True)
def offline_hub() -> Iterator[None]:
    # transformers must never reach a hub from these tests; it reads this when first imported.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


# --- The model -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return locate_chat_model(None)


@pytest.fixture(scope="session")
def registry() -> CollectorRegistry:
    """The Prometheus registry the shared engine reports to."""
    return CollectorRegistry()


@pytest.fixture(scope="session")
def engine(gguf_path: Path, registry: CollectorRegistry) -> Iterator[AsyncEngine]:
    """The serving engine on the shipped model, in fp32 (loaded on the engine's own thread)."""
    engine = AsyncEngine.load(gguf_path, observer=EngineMetrics(registry, DEFAULT_MODEL_NAME))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def loaded(engine: AsyncEngine) -> LoadedModel:
    return engine.loaded


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the test server's maintenance database: PENSTOCK_TEST_DATABASE_URL, or an embedded server."""
    external = os.environ.get("PENSTOCK_TEST_DATABASE_URL")
    if external:
        yield external
        return
    data_dir = tmp_path_factory.mktemp("postgres") / "pgdata"
    with EmbeddedPostgres(data_dir, delete_on_stop=True) as server:
        yield server.url


@pytest.fixture(scope="session")
async def template_database(postgres_server: str) -> AsyncIterator[str]:
    """Name of a migrated database that `database_url` clones for each test.

    The name is unique per run, so runs sharing an external server don't trip over each other.
    """
    name = f"penstock_template_{uuid4().hex[:12]}"
    async with scratch_database(postgres_server, name=name):
        await apply_migrations(with_database(postgres_server, name))
        yield name


@pytest.fixture
async def database_url(postgres_server: str, template_database: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database of this test's own, dropped afterwards."""
    async with scratch_database(postgres_server, template=template_database) as url:
        yield url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """An open `Database` on this test's own database."""
    async with Database(database_url) as db:
        yield db


# --- Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real redis-server on a free loopback port, without persistence, for the whole run."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the test Redis, emptied before the test."""
    client = connect_redis(redis_url)
    await client.flushall()
    yield client
    await client.aclose()
