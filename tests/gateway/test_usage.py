"""One ledger row per request, budgets from the ledger, and requests that do not wait on the database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from penstock.store.database import connect
from tests.gateway.conftest import ADMIN_KEY, MODEL
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key
from tests.helpers import database_refusing

ONE_TOKEN = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}


async def ledger_rows(database_url: str, expected: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The ledger once it holds `expected` rows (the writer flushes in the background)."""
    deadline = time.monotonic() + timeout_s
    async with await connect(database_url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute("SELECT * FROM usage_ledger ORDER BY created_at")
            names = [c.name for c in cursor.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)


async def test_an_answered_request_leaves_one_row(client: httpx.AsyncClient, database_url: str) -> None:
    key = await new_key(client)
    response = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))
    usage = response.json()["usage"]
    [row] = await ledger_rows(database_url, 1)
    assert row["request_id"] == response.headers["x-request-id"]
    assert (row["tenant_id"], row["key_id"], row["model"], row["status"]) == ("acme", key["id"], MODEL, "ok")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["route"] == "chat.completions" and row["latency_ms"] > 0
    assert (row["deployment"], row["route_reason"]) == (MODEL, response.headers["x-penstock-route"].split("=", 1)[1])
    assert {"gateway", "context", "admission", "prefill"} <= set(row["stage_ms"])


async def test_a_refused_request_leaves_a_row_with_its_error_code(client: httpx.AsyncClient, database_url: str) -> None:
    key = await new_key(client, models=["another-model"])
    assert (await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))).status_code == 403
    [row] = await ledger_rows(database_url, 1)
    assert (row["status"], row["prompt_tokens"], row["tenant_id"]) == ("model_not_allowed", 0, "acme")


async def test_a_spent_daily_budget_is_429_insufficient_quota(client: httpx.AsyncClient) -> None:
    await client.post("/admin/tenants", json={"id": "thrifty", "limits": {"daily_tokens": 50}})
    key = (await client.post("/admin/keys", json={"tenant": "thrifty"})).json()
    statuses = []
    for _ in range(3):  # each request uses about 32 tokens: the third finds the budget spent
        response = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))
        statuses.append(response.status_code)
    assert statuses == [200, 200, 429]
    error = assert_openai_error(response, 429)
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
    assert int(response.headers["retry-after"]) > 0


async def test_requests_are_served_while_the_database_is_down_and_their_rows_land_after(
    client: httpx.AsyncClient, postgres_server: str, database_url: str
) -> None:
    key = await new_key(client)
    async with database_refusing(postgres_server, database_url):
        for _ in range(3):  # the key comes from the cache, the rows wait in memory
            response = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))
            assert response.status_code == 200, response.text
        await asyncio.sleep(0.6)  # a flush fails meanwhile; nothing is lost
    rows = await ledger_rows(database_url, 3, timeout_s=15)
    assert [r["status"] for r in rows] == ["ok"] * 3


async def test_client_text_with_nul_characters_is_stored_without_them(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """PostgreSQL holds no NUL; one in a refused model name used to fail its whole ledger batch, every replay."""
    refused = await client.post("/v1/chat/completions", json={**ONE_TOKEN, "model": "no\u0000such"})
    assert_openai_error(refused, 404)
    answered = await client.post("/v1/chat/completions", json=ONE_TOKEN)  # likely in the same batch
    rows = {row["request_id"]: row for row in await ledger_rows(database_url, 2)}
    assert rows[refused.headers["x-request-id"]]["model"] == "nosuch"
    assert rows[answered.headers["x-request-id"]]["status"] == "ok"
    verdict = {"request_id": answered.headers["x-request-id"], "rating": -1, "comment": "bad\u0000answer"}
    assert (await client.post("/v1/feedback", json=verdict)).status_code == 201
    async with await connect(database_url) as conn:
        cursor = await conn.execute("SELECT comment FROM feedback")
        assert await cursor.fetchall() == [("badanswer",)]
    key = await new_key(client, name="k\u0000ey", models=["some\u0000model"])  # text and jsonb columns
    assert (key["name"], key["scopes"]["models"]) == ("key", ["somemodel"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_before_its_answer_is_recorded_as_gone(
    app: FastAPI, database_url: str, stream: bool
) -> None:
    """Audit finding 8: the work stops, and the ledger says client_disconnected with what was generated."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 2000}
    body |= {"ignore_eos": True, "stream": stream}
    sent: list[dict] = []
    started = time.monotonic()
    await app(_scope(), _leaving_after(json.dumps(body).encode(), seconds=0.4), _collect(sent))
    assert time.monotonic() - started < 5  # 2,000 tokens would take minutes
    [row] = await ledger_rows(database_url, 1)
    assert row["status"] == "client_disconnected" and row["completion_tokens"] < 2000


def _scope() -> dict:
    headers = [
        (b"host", b"penstock"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
    ]
    path = "/v1/chat/completions"
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("penstock", 80)}  # fmt: skip


def _leaving_after(body: bytes, seconds: float) -> Callable[[], Awaitable[dict]]:
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.sleep(seconds)  # the client waits this long for its answer, then hangs up
        return {"type": "http.disconnect"}

    return receive


def _collect(sent: list[dict]) -> Callable[[dict], Awaitable[None]]:
    async def send(message: dict) -> None:
        sent.append(message)

    return send
