import json

import httpx
import pytest

from tests.gateway.conftest import MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def sse_events(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


async def test_greedy_answer_names_paris(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert "Paris" in body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_carries_the_same_text_and_ends_with_done(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}
    whole = (await client.post("/v1/chat/completions", json=request)).json()
    response = await client.post(
        "/v1/chat/completions", json={**request, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


async def test_max_tokens_ends_with_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 2}
    )
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


async def test_stop_string_cuts_the_answer_before_it(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}
    full = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]["message"]["content"]
    assert "Paris" in full
    cut = (await client.post("/v1/chat/completions", json={**request, "stop": ["Paris"]})).json()
    assert cut["choices"][0]["message"]["content"] == full[: full.index("Paris")]
    assert cut["choices"][0]["finish_reason"] == "stop"


async def test_seeded_sampling_repeats(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "messages": QUESTION, "temperature": 1.0, "seed": 7, "max_tokens": 16}
    first = (await client.post("/v1/chat/completions", json=request)).json()
    second = (await client.post("/v1/chat/completions", json=request)).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


@pytest.mark.parametrize("role", ["system", "developer"])
async def test_system_and_developer_roles_are_accepted(client: httpx.AsyncClient, role: str) -> None:
    messages = [{"role": role, "content": "Answer in one word."}, *QUESTION]
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8}
    )
    assert response.status_code == 200


async def test_text_content_parts_are_joined(client: httpx.AsyncClient) -> None:
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    response = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": 24},
    )
    assert "Paris" in response.json()["choices"][0]["message"]["content"]


async def test_n_gives_that_many_choices(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "n": 3, "temperature": 1.0, "seed": 3}
    body = (await client.post("/v1/chat/completions", json=request)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] for c in body["choices"])
    assert body["usage"]["completion_tokens"] >= 3

    stream = await client.post("/v1/chat/completions", json={**request, "stream": True})
    chunks = [json.loads(e) for e in sse_events(stream.text)[:-1]]
    streamed = {i: "" for i in range(3)}
    for c in chunks:
        for choice in c["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content", "")
    assert streamed == {c["index"]: c["message"]["content"] for c in body["choices"]}


async def test_logprobs_in_openai_shape(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0, "logprobs": True}
    body = (await client.post("/v1/chat/completions", json={**request, "top_logprobs": 2})).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    first = content[0]
    assert first["logprob"] <= 0 and first["bytes"] == list(first["token"].encode())
    assert len(first["top_logprobs"]) == 2
    assert first["top_logprobs"][0]["token"] == first["token"]  # greedy: the chosen token is the likeliest
    assert "".join(t["token"] for t in content) == body["choices"][0]["message"]["content"]


async def test_penalties_change_sampling(client: httpx.AsyncClient) -> None:
    count = [{"role": "user", "content": "Repeat the word 'yes' ten times."}]
    base = {"model": MODEL, "messages": count, "max_tokens": 24, "temperature": 0}
    plain = (await client.post("/v1/chat/completions", json=base)).json()["choices"][0]["message"]["content"]
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 2.0}):
        response = await client.post("/v1/chat/completions", json={**base, **penalty})
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] != plain, penalty
