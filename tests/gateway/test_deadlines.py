"""A request's deadline (`x-penstock-deadline-ms`, or `penstock.timeout` in the body), on an engine that runs
one sequence at a time: passed while queued, a 504; passed mid-stream, the stream's error event; either way
the engine holds none of its KV blocks afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from penstock.app import build_app
from penstock.config import DeploymentConfig, Settings
from penstock.engine.async_engine import AsyncEngine
from penstock.engine.llm_engine import EngineConfig
from penstock.engine.scheduler import SchedulerConfig
from penstock.engine.served import ServedModel
from tests.gateway.test_errors import assert_openai_error

MODEL = "one-at-a-time"
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Count to a thousand."}], "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(gguf_path: Path) -> Iterator[AsyncEngine]:
    config = EngineConfig(prefix_caching=False, scheduler=SchedulerConfig(max_num_seqs=1))
    engine = AsyncEngine.load(gguf_path, lambda _: config)
    yield engine
    engine.close()


@pytest.fixture
async def client(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serving(engine, Settings(home=tmp_path)):
        yield client


async def serving(engine: AsyncEngine, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings, {MODEL: ServedModel(engine)}, with_database=False)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield client


async def all_blocks_free(engine: AsyncEngine) -> bool:
    stats = await engine.stats()
    return stats.free_blocks == stats.total_blocks and stats.running == stats.waiting == 0


async def test_a_deadline_passed_in_the_queue_is_a_504(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    ahead = asyncio.create_task(client.post("/v1/chat/completions", json={**LONG, "max_tokens": 60}))
    deadline = asyncio.get_running_loop().time() + 30
    while (await engine.stats()).running == 0:  # until the long one holds the only seat
        assert not ahead.done(), ahead.result().text
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    late = await client.post(
        "/v1/chat/completions", json={**LONG, "max_tokens": 4}, headers={"x-penstock-deadline-ms": "200"}
    )
    error = assert_openai_error(late, 504)
    assert error["code"] == "deadline_exceeded" and "first token" in error["message"]
    assert (await ahead).status_code == 200  # the one ahead was not disturbed
    assert await all_blocks_free(engine)


async def test_a_deadline_passed_mid_stream_ends_it_with_an_error_event(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {**LONG, "max_tokens": 2000, "stream": True, "penstock": {"timeout": 0.5}}
    started = asyncio.get_running_loop().time()
    response = await client.post("/v1/chat/completions", json=body)
    took = asyncio.get_running_loop().time() - started
    payloads = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "deadline_exceeded"
    assert len(payloads) > 3  # tokens came before the deadline
    assert took < 5  # 2,000 tokens would take half a minute here
    assert await all_blocks_free(engine)  # the engine aborted the sequence and freed its blocks


@pytest.mark.parametrize("given", ["0", "-5", "soon", "nan", "3600001"])
async def test_a_malformed_deadline_is_a_400(client: httpx.AsyncClient, given: str) -> None:
    response = await client.post(
        "/v1/chat/completions", json={**LONG, "max_tokens": 2}, headers={"x-penstock-deadline-ms": given}
    )
    assert assert_openai_error(response, 400, param="x-penstock-deadline-ms")


async def test_a_deployment_sets_the_deadline_of_requests_that_set_none(engine: AsyncEngine, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, deployments=[DeploymentConfig(name=MODEL, deadline_s=0.5)])
    async for client in serving(engine, settings):
        cut = await client.post("/v1/chat/completions", json={**LONG, "max_tokens": 2000})
        own = await client.post(
            "/v1/chat/completions", json={**LONG, "max_tokens": 40}, headers={"x-penstock-deadline-ms": "60000"}
        )
    assert assert_openai_error(cut, 504)["code"] == "deadline_exceeded"  # whole: the deadline passed generating
    assert own.status_code == 200  # the request's own deadline stands over the deployment's
    assert await all_blocks_free(engine)
