"""Rate limits at the front door: OpenAI's headers on every answer, 429 with Retry-After past a limit,
and the official SDK raising its own exception classes."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import MODEL, SdkFor
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key

ONE_TOKEN = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}


async def test_answers_carry_ratelimit_headers_and_the_limit_is_exact(client: httpx.AsyncClient) -> None:
    key = await new_key(client, rpm=2, tpm=10_000)
    first = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000

    streamed = await client.post("/v1/chat/completions", json={**ONE_TOKEN, "stream": True}, headers=as_key(key))
    assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "0"

    refused = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))
    error = assert_openai_error(refused, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_tenant_limit_binds_all_its_keys_together(client: httpx.AsyncClient) -> None:
    await client.post("/admin/tenants", json={"id": "small", "limits": {"rpm": 1}})
    keys = [(await client.post("/admin/keys", json={"tenant": "small"})).json() for _ in range(2)]
    assert (await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(keys[0]))).status_code == 200
    assert_openai_error(await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(keys[1])), 429)


async def test_the_master_key_is_not_limited(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=ONE_TOKEN)
    assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers


async def test_the_sdk_raises_its_own_class_for_each_refusal(client: httpx.AsyncClient, sdk_for: SdkFor) -> None:
    limited = sdk_for((await new_key(client, rpm=1, models=[MODEL]))["key"])
    await limited.chat.completions.create(**ONE_TOKEN)
    with pytest.raises(openai.RateLimitError):
        await limited.chat.completions.create(**ONE_TOKEN)
    narrow = sdk_for((await new_key(client, models=["another-model"]))["key"])
    with pytest.raises(openai.PermissionDeniedError):
        await narrow.chat.completions.create(**ONE_TOKEN)
    with pytest.raises(openai.AuthenticationError):
        await sdk_for("pk-not-a-key").models.list()
    plain = sdk_for((await new_key(client))["key"])
    with pytest.raises(openai.NotFoundError):
        await plain.chat.completions.create(**{**ONE_TOKEN, "model": "gpt-4o"})
    with pytest.raises(openai.BadRequestError):
        await plain.chat.completions.create(**{**ONE_TOKEN, "temperature": 9})
