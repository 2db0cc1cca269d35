"""Request ids and CORS."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import PolicyConfig, Settings
from penstock.engine.served import ServedModel
from tests.gateway.conftest import ADMIN_KEY


async def test_a_clients_request_id_is_echoed_and_a_missing_one_is_made(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models", headers={"x-request-id": "trace-42"})).headers["x-request-id"] == "trace-42"
    assert len((await client.get("/v1/models")).headers["x-request-id"]) == 32


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
