"""The promise of the README: `penstock serve`, then the official openai SDK gets "Paris"."""

import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from penstock.config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL_NAME
from tests.cli.conftest import ADMIN_KEY, RunningServer, penstock, penstock_env, start_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def sdk(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN_KEY, max_retries=0)


def test_sdk_non_streaming_answer_contains_paris(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_sdk_streaming_answer_contains_paris(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2  # it really streamed, token by token
    assert "Paris" in "".join(pieces)


def test_sdk_embeddings(sdk: openai.OpenAI) -> None:
    """The SDK asks for base64 by default and decodes it: both ends of the encoding meet here."""
    result = sdk.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input=["Paris is in France.", "Bonjour"])
    assert [len(item.embedding) for item in result.data] == [384, 384]
    assert abs(sum(x * x for x in result.data[0].embedding) - 1.0) < 1e-3
    assert result.usage.prompt_tokens > 4


def test_sdk_lists_the_model(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [DEFAULT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL]


def test_sdk_raises_its_own_error_classes(server: RunningServer, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, temperature=5)
    stranger = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_embedded_postgres_lives_under_home(server: RunningServer) -> None:
    assert (server.home / "pgdata" / "PG_VERSION").read_text().strip() == "18"


def test_ctrl_c_lets_a_stream_finish_then_stops_embedded_postgres(tmp_path: Path) -> None:
    running = start_server(tmp_path)
    pid_file = tmp_path / "pgdata" / "postmaster.pid"
    assert pid_file.exists()
    body = {"model": DEFAULT_MODEL_NAME, "messages": QUESTION, "max_tokens": 24, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{running.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert any('"content":"' in line for line in lines)  # streaming has begun
        running.process.send_signal(signal.SIGINT)  # shutdown starts mid-stream
        rest = list(lines)
    assert "data: [DONE]" in rest and not any('"error"' in line for line in rest)  # it finished in the grace period
    assert running.process.wait(timeout=60) == 0
    assert not pid_file.exists()  # postgres removes it as it shuts down


def test_a_stream_outliving_the_grace_period_ends_with_an_error_event(tmp_path: Path) -> None:
    running = start_server(tmp_path, PENSTOCK_POLICY__SHUTDOWN_GRACE_S="2")
    story = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
    # ignore_eos: the story cannot end by itself inside the grace period, however fast this machine decodes.
    long = {"model": DEFAULT_MODEL_NAME, "messages": story, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{running.base_url}/v1/chat/completions", json=long, timeout=60) as response:
        lines = response.iter_lines()
        assert any('"content":"' in line for line in lines)
        signalled = time.monotonic()
        running.process.send_signal(signal.SIGINT)
        rest = [line for line in lines if line.startswith("data: ")]
    waited = time.monotonic() - signalled
    assert rest[-1] == "data: [DONE]"
    assert '"code": "shutting_down"' in rest[-2]  # told why, in OpenAI's error shape, before the end
    assert waited < 10  # the grace period, not the 4,000 tokens
    assert running.process.wait(timeout=60) == 0


def test_serve_refuses_a_public_address_without_a_key(tmp_path: Path) -> None:
    result = penstock("serve", "--host", "0.0.0.0", env=penstock_env(tmp_path))
    assert result.returncode == 2
    assert "PENSTOCK_ADMIN_KEY" in result.stderr


@pytest.mark.parametrize("key", ["", "too-short"])
def test_serve_refuses_an_empty_or_short_master_key(tmp_path: Path, key: str) -> None:
    result = penstock("serve", "--host", "0.0.0.0", env=penstock_env(tmp_path, PENSTOCK_ADMIN_KEY=key))
    assert result.returncode == 2
    assert "PENSTOCK_ADMIN_KEY" in result.stderr and "16 characters" in result.stderr


def test_serve_with_an_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("deployments:\n  - name: x\n    dtype: int3\n")
    result = penstock("serve", "--config", str(config), env=penstock_env(tmp_path))
    assert result.returncode == 2
    assert "deployments.0.dtype" in result.stderr


def test_a_client_that_disconnects_mid_stream_frees_the_engine(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": DEFAULT_MODEL_NAME, "messages": QUESTION, "max_tokens": 4000, "stream": True, "priority": "batch"}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, headers=headers) as response:
        tokens = (line for line in response.iter_lines() if '"content":"' in line and '"role"' not in line)
        assert next(tokens) and next(tokens)  # two tokens in: the engine is at work
        assert running_sequences(server) == 1  # generating: 4,000 tokens would take minutes
    deadline = time.monotonic() + 10
    while running_sequences(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_sequences(server) == 0
    assert metric(server, "penstock_kv_cache_usage_ratio") == 0


def test_a_client_that_gives_up_on_a_whole_answer_frees_the_engine(server: RunningServer) -> None:
    """Audit finding 8: a non-streaming request whose client left at 3 s ran 177 s more, recorded as ok."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": DEFAULT_MODEL_NAME, "messages": QUESTION, "max_tokens": 4000, "ignore_eos": True}
    deadline = time.monotonic() + 30
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=1.0) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/v1/chat/completions", json=body)  # 4,000 tokens would take minutes
    while running_sequences(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_sequences(server) == 0


def metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    return float(next(line for line in text.splitlines() if line.startswith(name)).rsplit(" ", 1)[1])


def running_sequences(server: RunningServer) -> float:
    return metric(server, "penstock_engine_running_sequences")
