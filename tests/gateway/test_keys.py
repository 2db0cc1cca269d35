"""Tenants and keys through the admin API, and what a tenant key may and may not do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import Settings
from penstock.engine.served import ServedModel
from tests.gateway.conftest import ADMIN_KEY, MODEL
from tests.gateway.test_errors import assert_openai_error

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def new_key(client: httpx.AsyncClient, tenant: str = "acme", **scopes: Any) -> dict[str, Any]:
    response = await client.post("/admin/tenants", json={"id": tenant, "name": tenant.title()})
    assert response.status_code in (201, 409), response.text
    response = await client.post("/admin/keys", json={"tenant": tenant, **scopes})
    assert response.status_code == 201, response.text
    return response.json()


def as_key(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}"}


async def test_a_created_key_answers_chat_as_its_tenant(client: httpx.AsyncClient) -> None:
    key = await new_key(client)
    assert key["key"].startswith("pk-") and key["tenant"] == "acme" and key["id"].startswith("key_")
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0}
    response = await client.post("/v1/chat/completions", json=body, headers=as_key(key))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


async def test_listing_keys_never_shows_the_key(client: httpx.AsyncClient) -> None:
    key = await new_key(client)
    listed = (await client.get("/admin/keys", params={"tenant": "acme"})).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert key["key"] not in repr(listed) and "key" not in listed[0]


async def test_a_revoked_key_stops_working_within_a_second(client: httpx.AsyncClient) -> None:
    key = await new_key(client)
    assert (await client.get("/v1/models", headers=as_key(key))).status_code == 200
    revoked_at = time.monotonic()
    assert (await client.delete(f"/admin/keys/{key['id']}")).status_code == 200
    while (response := await client.get("/v1/models", headers=as_key(key))).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0, "still accepted a second after revocation"
        await asyncio.sleep(0.05)
    assert "revoked" in assert_openai_error(response, 401)["message"]


async def test_an_expired_key_is_401(client: httpx.AsyncClient) -> None:
    key = await new_key(client, expires_at="2020-01-01T00:00:00Z")
    response = await client.get("/v1/models", headers=as_key(key))
    assert "expired" in assert_openai_error(response, 401)["message"]


async def test_a_key_sees_and_uses_only_its_models(client: httpx.AsyncClient) -> None:
    key = await new_key(client, models=["another-model"])
    assert (await client.get("/v1/models", headers=as_key(key))).json()["data"] == []
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION}, headers=as_key(key)
    )
    assert assert_openai_error(response, 403, param="model")["code"] == "model_not_allowed"


async def test_a_tool_the_key_may_not_use_is_403(client: httpx.AsyncClient) -> None:
    key = await new_key(client, tools=["search"])
    tool = {"type": "function", "function": {"name": "delete_everything", "parameters": {"type": "object"}}}
    body = {"model": MODEL, "messages": QUESTION, "tools": [tool]}
    response = await client.post("/v1/chat/completions", json=body, headers=as_key(key))
    assert assert_openai_error(response, 403, param="tools")["code"] == "tool_not_allowed"


async def test_max_tokens_above_the_keys_cap_is_400_and_the_default_is_capped(client: httpx.AsyncClient) -> None:
    key = await new_key(client, max_tokens=3)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to one hundred."}], "temperature": 0}
    response = await client.post("/v1/chat/completions", json={**body, "max_tokens": 4}, headers=as_key(key))
    assert_openai_error(response, 400, param="max_tokens")
    response = await client.post("/v1/chat/completions", json=body, headers=as_key(key))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 3


async def test_a_new_key_is_not_unlimited(client: httpx.AsyncClient) -> None:
    """Audit finding 8: a key without a cap could ask for any max_tokens, n times over."""
    key = await new_key(client)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 5000}
    assert (
        "at most 4096"
        in assert_openai_error(
            await client.post("/v1/chat/completions", json=body, headers=as_key(key)), 400, param="max_tokens"
        )["message"]
    )
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4000, "n": 3}
    assert_openai_error(await client.post("/v1/chat/completions", json=body, headers=as_key(key)), 400, param="n")
    text = {"model": MODEL, "prompt": "Once", "max_tokens": 5000}
    assert_openai_error(await client.post("/v1/completions", json=text, headers=as_key(key)), 400, param="max_tokens")
    generous = await new_key(client, max_tokens=6000)  # a key's own cap stands above the default one
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 5000, "temperature": 0}
    answered = await client.post("/v1/chat/completions", json=body, headers=as_key(generous))
    assert answered.status_code == 200, answered.text


async def test_the_admin_api_refuses_a_plain_key(client: httpx.AsyncClient) -> None:
    key = await new_key(client)
    response = await client.get("/admin/tenants", headers=as_key(key))
    assert_openai_error(response, 403)


async def test_an_admin_key_may_use_the_admin_api(client: httpx.AsyncClient) -> None:
    key = await new_key(client, admin=True)
    response = await client.get("/admin/tenants", headers=as_key(key))
    assert response.status_code == 200 and [t["id"] for t in response.json()["data"]] == ["acme"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/admin/keys", {"tenant": "nobody"}, 404),
        ("/admin/keys", {"tenant": "acme", "rpm": 0}, 400),
        ("/admin/keys", {"tenant": "acme", "scopes": "all"}, 400),
        ("/admin/tenants", {"id": "has space"}, 400),
    ],
)
async def test_admin_mistakes_are_openai_errors(client: httpx.AsyncClient, path: str, body: dict, status: int) -> None:
    await client.post("/admin/tenants", json={"id": "acme"})
    assert_openai_error(await client.post(path, json=body), status)


async def test_a_duplicate_tenant_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/admin/tenants", json={"id": "acme"})).status_code == 201
    assert assert_openai_error(await client.post("/admin/tenants", json={"id": "acme"}), 409)["code"] == "conflict"


async def test_revoking_an_unknown_key_is_404(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.delete("/admin/keys/key_nothing"), 404)


async def test_a_key_revoked_on_one_replica_stops_working_on_another_within_a_second(
    client: httpx.AsyncClient, database_url: str, served: dict[str, ServedModel], tmp_path: Path
) -> None:
    key = await new_key(client)
    other = build_app(
        Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url), served, CollectorRegistry()
    )
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica-2") as replica:
            assert (await replica.get("/v1/models", headers=as_key(key))).status_code == 200
            revoked_at = time.monotonic()
            assert (await client.delete(f"/admin/keys/{key['id']}")).status_code == 200
            while (response := await replica.get("/v1/models", headers=as_key(key))).status_code == 200:
                assert time.monotonic() - revoked_at < 1.0, "the other replica still accepts it after a second"
                await asyncio.sleep(0.02)
            assert_openai_error(response, 401)
