"""An app wired exactly as `penstock serve` wires it, on this test's own database, the real model shared."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import DEFAULT_MODEL_NAME, Settings
from penstock.engine.async_engine import AsyncEngine
from penstock.engine.served import ServedModel

ADMIN_KEY = "sk-test-admin-0123456789"
MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="session")
def served(engine: AsyncEngine) -> dict[str, ServedModel]:
    return {MODEL: ServedModel(engine)}


@pytest.fixture
async def app(
    database_url: str, served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    settings = Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url)
    app = build_app(settings, served, registry)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=headers) as client:
        yield client


SdkFor = Callable[[str], openai.AsyncOpenAI]


@pytest.fixture
async def sdk_for(app: FastAPI) -> AsyncIterator[SdkFor]:
    """The official SDK, talking to this test's app in process, with a given key."""
    clients: list[httpx.AsyncClient] = []

    def make(api_key: str) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://penstock")
        clients.append(http)
        return openai.AsyncOpenAI(base_url="http://penstock/v1", api_key=api_key, http_client=http, max_retries=0)

    yield make
    for http in clients:
        await http.aclose()
