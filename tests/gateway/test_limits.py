"""Policy limits: oversized bodies (413) and too many messages (400) stop at the gateway."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from penstock.app import build_app
from penstock.config import PolicyConfig, Settings
from penstock.engine.served import ServedModel
from tests.gateway.conftest import ADMIN_KEY, MODEL


@pytest.fixture
async def strict(database_url: str, served: dict[str, ServedModel], tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    policy = PolicyConfig(max_request_bytes=2_000, max_messages=3)
    app = build_app(Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url, policy=policy), served)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=headers) as client:
            yield client


def chat(content: str, count: int = 1) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}] * count, "max_tokens": 1}


async def test_declared_oversized_body_is_413(strict: httpx.AsyncClient) -> None:
    response = await strict.post("/v1/chat/completions", json=chat("x" * 5_000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_chunked_oversized_body_is_413(strict: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    response = await strict.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


async def test_body_within_the_limit_is_served(strict: httpx.AsyncClient) -> None:
    assert (await strict.post("/v1/chat/completions", json=chat("hello"))).status_code == 200


async def test_too_many_messages_is_400(strict: httpx.AsyncClient) -> None:
    response = await strict.post("/v1/chat/completions", json=chat("hi", count=4))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
