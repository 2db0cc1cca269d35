import json

import httpx

from tests.gateway.conftest import MODEL
from tests.gateway.test_chat import sse_events

PROMPT = "The capital of France is"


async def test_text_completion_continues_the_prompt(client: httpx.AsyncClient) -> None:
    body = (
        await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0})
    ).json()
    assert body["object"] == "text_completion"
    assert "Paris" in body["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == 5  # raw text: no chat template around it


async def test_echo_and_legacy_logprobs(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 2}
    choice = (await client.post("/v1/completions", json=request)).json()["choices"][0]
    assert choice["text"].startswith(PROMPT)
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 3
    assert logprobs["text_offset"][0] == len(PROMPT)
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])


async def test_streamed_text_equals_the_whole(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    whole = (await client.post("/v1/completions", json=request)).json()["choices"][0]["text"]
    stream = await client.post("/v1/completions", json={**request, "stream": True})
    events = sse_events(stream.text)
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in map(json.loads, events[:-1]) if c["choices"]) == whole


async def test_batched_prompts_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


async def test_metrics_record_the_engine_at_work(client: httpx.AsyncClient) -> None:
    def sample(text: str, name: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(name))
        return float(line.rsplit(" ", 1)[1])

    ttft = 'penstock_time_to_first_token_seconds_count{deployment="' + MODEL + '"}'
    before = sample((await client.get("/metrics")).text, ttft)
    await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 2})
    text = (await client.get("/metrics")).text
    assert sample(text, ttft) == before + 1
    for name in (
        "penstock_inter_token_latency_seconds_count",
        "penstock_engine_step_batch_size_count",
        "penstock_kv_cache_usage_ratio",
        "penstock_prefix_cache_hit_tokens_total",
        "penstock_engine_preemptions_total",
        'penstock_engine_tokens_total{deployment="' + MODEL + '",phase="decode"}',
    ):
        assert name in text, name
