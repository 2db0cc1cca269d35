"""Policy limits: oversized (413) and slow (408) bodies, bodies under a bad key (401, unread), and too many
messages (400) stop at the gateway."""

import asyncio
import time
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
    policy = PolicyConfig(max_request_bytes=2_000, max_messages=3, body_timeout_s=0.5)
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


async def dripped(sent: list[bytes], pause_s: float = 0.2) -> AsyncIterator[bytes]:
    """A body sent a few bytes at a time, as the audit's slow client sent it."""
    pieces = [b'{"model": "m", ', b'"messages": [', b"{", b'"role": "user", ', b'"content": "hi"', b"}]}"]
    for piece in pieces:
        sent.append(piece)
        yield piece
        await asyncio.sleep(pause_s)


async def test_a_body_slower_than_its_deadline_is_408(strict: httpx.AsyncClient) -> None:
    """Audit finding 11: a dripped body held its connection past 45 s."""
    sent: list[bytes] = []
    started = time.monotonic()
    headers = {"Content-Type": "application/json"}
    response = await strict.post("/v1/chat/completions", content=dripped(sent), headers=headers)
    assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 1.2 and len(sent) < 6  # refused at 0.5 s, not after the whole body


async def test_a_bad_key_is_refused_before_its_body_is_read(strict: httpx.AsyncClient) -> None:
    sent: list[bytes] = []
    headers = {"Content-Type": "application/json", "Authorization": "Bearer pk-not-a-key"}
    response = await strict.post("/v1/chat/completions", content=dripped(sent), headers=headers)
    assert response.status_code == 401 and sent == []
    response = await strict.post("/v1/chat/completions", json=chat("x" * 5_000), headers={"Authorization": ""})
    assert response.status_code == 401  # the key is checked before the size, too
