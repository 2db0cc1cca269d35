"""An open server answers only loopback names in Host (audit finding 5: DNS rebinding got a 200)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import Settings
from penstock.engine.served import ServedModel
from penstock.gateway.host_check import is_loopback_host
from tests.gateway.conftest import ADMIN_KEY
from tests.gateway.test_errors import assert_openai_error


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("app.localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("127.8.9.10", True),
        ("[::1]:8000", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("10.0.0.1:8000", False),
        ("localhost.evil.example", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_loopback_hosts_are_told_apart(host: str, loopback: bool) -> None:
    assert is_loopback_host(host.encode()) is loopback


@pytest.mark.parametrize("admin_key", [None, ADMIN_KEY])
async def test_only_an_open_server_refuses_a_foreign_host(
    database_url: str, served: dict[str, ServedModel], tmp_path: Path, admin_key: str | None
) -> None:
    settings = Settings(home=tmp_path, admin_key=admin_key, database_url=database_url)
    app = build_app(settings, served, CollectorRegistry())
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, headers=headers) as client:
        foreign = await client.get("http://evil.example/v1/models")
        local = await client.get("http://127.0.0.1:8000/v1/models")
    assert local.status_code == 200
    if admin_key is None:
        assert assert_openai_error(foreign, 400)["code"] == "invalid_host"
    else:
        assert foreign.status_code == 200  # a key guards it: any name may reach it
