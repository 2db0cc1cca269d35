"""Request ids, CORS, start-up and shutdown."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import PolicyConfig, Settings
from penstock.engine.served import ServedModel
from tests.gateway.conftest import ADMIN_KEY, MODEL


async def test_cors_allows_configured_origins_and_exposes_the_limit_headers(
    database_url: str, served: dict[str, ServedModel], tmp_path: Path
) -> None:
    policy = PolicyConfig(cors_origins=["https://app.example"])
    settings = Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url, policy=policy)
    app = build_app(settings, served, CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://penstock") as client:
            preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
            allowed = await client.options("/v1/chat/completions", headers=preflight)
            other = await client.options(
                "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
            )
            simple = await client.get(
                "/v1/models", headers={"Origin": "https://app.example", "Authorization": f"Bearer {ADMIN_KEY}"}
            )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
    assert "x-ratelimit-remaining-requests" in simple.headers["access-control-expose-headers"]


async def test_a_stream_past_the_grace_period_ends_with_an_error(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.state.draining.begin(0)  # shutdown began with no grace at all: the stream stops at its first event
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "stream": True}
    response = await client.post("/v1/chat/completions", json={**body, "max_tokens": 200})
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "shutting_down"
    content = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert len([c for c in content if c]) <= 1  # it stopped at once, not after 200 tokens


async def test_what_start_up_built_is_frozen_until_the_app_stops(
    database_url: str, served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> None:
    """Frozen, start-up's objects stay out of the collector's full passes; unfrozen, a stopped app can be freed."""
    app = build_app(Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url), served, registry)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
