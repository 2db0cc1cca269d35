"""Every client mistake is a 4xx in OpenAI's error shape, and none reaches the model."""

import httpx
import pytest

from tests.gateway.conftest import MODEL

QUESTION = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


async def test_missing_key_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION}, headers={"Authorization": ""}
    )
    assert assert_openai_error(response, 401)["type"] == "authentication_error"


async def test_wrong_key_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert_openai_error(response, 401)


async def test_unknown_model_is_404_model_not_found(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": QUESTION})
    assert assert_openai_error(response, 404, param="model")["code"] == "model_not_found"


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b'{"model": "x", ', headers={"Content-Type": "application/json"}
    )
    assert assert_openai_error(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("label", [None, "application/x-www-form-urlencoded", "text/plain"])
async def test_a_json_body_sent_unlabelled_is_read_as_json(client: httpx.AsyncClient, label: str | None) -> None:
    """`curl -d` labels its body a form; every body here is JSON, so it is read as JSON, strictly."""
    headers = {"Content-Type": label} if label else {}
    body = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}' % MODEL.encode()
    answered = await client.post("/v1/chat/completions", content=body, headers=headers)
    assert answered.status_code == 200 and answered.json()["object"] == "chat.completion"
    broken = await client.post("/v1/chat/completions", content=b"model=x&messages=hi", headers=headers)
    assert assert_openai_error(broken, 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", rb'{"model": "m", "messages": [{"role": "user", "content": "hi \udc00"}]}'),
        (
            "/v1/chat/completions",
            rb'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        ),
        ("/v1/feedback", rb'{"request_id": "r", "rating": 1, "comment": "\ud800"}'),
    ],
)
async def test_json_that_is_not_strict_json_is_400(client: httpx.AsyncClient, route: str, body: bytes) -> None:
    """A lone surrogate escape (which no string can be encoded from: it was a 500) or a NaN literal."""
    response = await client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert assert_openai_error(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"priority": "urgent"}, "priority"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_p": 0}, "top_p"),
    ],
)
async def test_invalid_fields_are_400_naming_the_param(client: httpx.AsyncClient, change: dict, param: str) -> None:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **change})
    assert_openai_error(response, 400, param=param)


async def test_missing_model_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"messages": QUESTION})
    assert_openai_error(response, 400, param="model")


async def test_top_logprobs_without_logprobs_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "top_logprobs": 3})
    assert_openai_error(response, 400, param="top_logprobs")


async def test_max_tokens_beyond_the_context_window_is_400(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1_000_000}
    assert_openai_error(await client.post("/v1/chat/completions", json=body), 400, param="max_tokens")  # the cap
    await client.post("/admin/tenants", json={"id": "acme"})
    generous = await client.post("/admin/keys", json={"tenant": "acme", "max_tokens": 8192})  # the whole window
    headers = {"Authorization": f"Bearer {generous.json()['key']}"}
    body["max_tokens"] = 8192  # with the prompt, past the 8,192-token window
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert assert_openai_error(response, 400, param="messages")["code"] == "context_length_exceeded"


async def test_prompt_longer_than_the_window_is_400(client: httpx.AsyncClient) -> None:
    long = [{"role": "user", "content": "word " * 9000}]
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": long})
    assert assert_openai_error(response, 400)["code"] == "context_length_exceeded"


async def test_streaming_request_errors_before_the_stream_starts(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "nope", "messages": QUESTION, "stream": True})
    assert_openai_error(response, 404)


async def test_unknown_route_is_404_in_openai_shape(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing-here"), 404)


async def test_wrong_method_is_405_in_openai_shape(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/chat/completions"), 405)


async def test_the_server_still_answers_after_bad_requests(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", content=b"\xff\xfe", headers={"Content-Type": "application/json"})
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 2, "temperature": 0}
    )
    assert response.status_code == 200
