"""`penstock worker`: the engine alone behind the OpenAI API, as a gateway would drive vLLM."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from penstock.config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL_NAME
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
