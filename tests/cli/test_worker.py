"""`penstock worker`: the engine alone behind the OpenAI API, as a gateway would drive vLLM."""

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from penstock.app import build_app
from penstock.config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL_NAME, DeploymentConfig, Settings, UpstreamConfig
from tests.cli.conftest import RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("worker"), "worker")
    yield running
    assert stop_server(running) == 0


def test_worker_answers_chat_and_text_completions(worker: RunningServer) -> None:
    sdk = openai.OpenAI(base_url=f"{worker.base_url}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat = sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=question, temperature=0)
    assert "Paris" in chat.choices[0].message.content
    stream = sdk.completions.create(
        model=DEFAULT_MODEL_NAME, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
    )
    assert "Paris" in "".join(c.choices[0].text for c in stream if c.choices)
    assert [m.id for m in sdk.models.list()] == [DEFAULT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL]


def test_worker_exports_metrics_and_keeps_no_database(worker: RunningServer) -> None:
    assert httpx.get(f"{worker.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{worker.base_url}/readyz").json() == {"status": "ready", "checks": {"models": True}}
    assert "penstock_kv_cache_usage_ratio" in httpx.get(f"{worker.base_url}/metrics").text
    assert not Path(worker.home, "pgdata").exists()


async def test_a_gateway_embeds_through_the_worker_as_this_process_would(worker: RunningServer, tmp_path: Path) -> None:
    """A remote deployment on the worker gives the vectors and the token count of the same model in process."""
    upstream = UpstreamConfig(urls=[f"{worker.base_url}/v1"], model=DEFAULT_EMBEDDING_MODEL)
    settings = Settings(
        home=tmp_path,
        deployments=[DeploymentConfig(name="far-minilm", backend="openai", upstream=upstream)],
    )
    texts = ["Paris is the capital of France.", "A penstock carries water to a turbine."]
    app = build_app(settings, {}, with_database=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client,
    ):
        remote, local = [
            await client.post("/v1/embeddings", json={"model": model, "input": texts})
            for model in ("far-minilm", DEFAULT_EMBEDDING_MODEL)
        ]
    assert remote.status_code == 200 and local.status_code == 200
    assert remote.json()["usage"] == local.json()["usage"]  # the worker's own count, the same tokenizer
    for far, near in zip(remote.json()["data"], local.json()["data"], strict=True):
        assert _cosine(far["embedding"], near["embedding"]) > 0.99  # each side may time bf16 or fp32 faster


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
