"""Admission under overload, through the whole pipeline: a deployment's queue holds one request at a time
(the test takes that slot itself, so who waits is certain), tiers order the rest, a full queue sheds batch
work first, a route passes an overloaded deployment over, and a deadline passes while a request waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from penstock.app import build_app
from penstock.config import DeploymentConfig, QueueConfig, RouteConfig, Settings
from penstock.engine.async_engine import AsyncEngine
from penstock.engine.served import ServedModel
from penstock.gateway.convert import priority_of
from penstock.identity import TenantLimits
from penstock.router.deployment_queue import DeploymentQueue, Slot
from penstock.types import Caller, ChatRequest, SamplingParams
from tests.gateway.test_errors import assert_openai_error

BIG, SMALL, ROUTE = "big", "small", "chat"
HELD = ChatRequest("held", BIG, (), SamplingParams(max_tokens=1), Caller("test", "test"))


def body(model: str = BIG, priority: str = "interactive", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say hi."}]
    return {"model": model, "messages": messages, "max_tokens": 2, "priority": priority, **extra}


@asynccontextmanager
async def serving(engine: AsyncEngine, tmp_path: Path, **queue: Any) -> AsyncIterator[httpx.AsyncClient]:
    """`big` takes one request at a time behind a queue configured by `queue`; `small` one, with no queue."""
    settings = Settings(
        home=tmp_path,
        deployments=[
            DeploymentConfig(name=BIG, queue=QueueConfig(concurrency=1, **queue)),
            DeploymentConfig(name=SMALL, queue=QueueConfig(concurrency=1, max_size=0)),
        ],
        routes=[RouteConfig(name=ROUTE, ladder=[BIG, SMALL])],
    )
    app = build_app(settings, {BIG: ServedModel(engine), SMALL: ServedModel(engine)}, with_database=False)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        client.queues = {n: d.queue for n, d in app.state.services.pipeline.ladder.deployments.items()}  # type: ignore[attr-defined]
        yield client


def queue_of(client: httpx.AsyncClient, name: str = BIG) -> DeploymentQueue:
    return client.queues[name]  # type: ignore[attr-defined,no-any-return]


async def hold(client: httpx.AsyncClient, name: str = BIG) -> Slot:
    """The deployment's only slot, taken as a request would take it."""
    return await queue_of(client, name).enter(1, HELD)


async def waiting(queue: DeploymentQueue, count: int) -> None:
    deadline = time.monotonic() + 30
    while queue.waiting() != count:
        assert time.monotonic() < deadline, f"{queue.waiting()} waiting, not {count}"
        await asyncio.sleep(0.005)


async def test_a_deadline_that_passes_in_the_queue_is_a_504_and_holds_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    async with serving(engine, tmp_path) as client:
        held = await hold(client)
        late = await client.post("/v1/chat/completions", json=body(), headers={"x-penstock-deadline-ms": "200"})
        assert assert_openai_error(late, 504)["code"] == "deadline_exceeded"
        assert queue_of(client).waiting() == 0  # it left the queue
        held.release()
        assert (await client.post("/v1/chat/completions", json=body())).status_code == 200
    stats = await engine.stats()
    assert stats.free_blocks == stats.total_blocks and stats.running == stats.waiting == 0


async def test_batch_requests_wait_behind_interactive_ones_that_came_later(engine: AsyncEngine, tmp_path: Path) -> None:
    async with serving(engine, tmp_path) as client:
        held = await hold(client)
        finished: list[str] = []

        async def ask(priority: str) -> httpx.Response:
            response = await client.post("/v1/chat/completions", json=body(priority=priority))
            finished.append(priority)
            return response

        batch = asyncio.create_task(ask("batch"))
        await waiting(queue_of(client), 1)
        interactive = asyncio.create_task(ask("interactive"))
        await waiting(queue_of(client), 2)
        assert queue_of(client).waiting("batch") == 1
        held.release()
        responses = await asyncio.gather(batch, interactive)
    assert [r.status_code for r in responses] == [200, 200]
    assert finished == ["interactive", "batch"]


async def test_a_full_queue_sheds_batch_work_first(engine: AsyncEngine, tmp_path: Path) -> None:
    async with serving(engine, tmp_path, max_size=2) as client:
        held = await hold(client)
        batch = asyncio.create_task(client.post("/v1/chat/completions", json=body(priority="batch")))
        first = asyncio.create_task(client.post("/v1/chat/completions", json=body()))
        await waiting(queue_of(client), 2)
        second = asyncio.create_task(client.post("/v1/chat/completions", json=body()))
        shed = await batch  # refused to make room, while the interactive ones still wait
        error = assert_openai_error(shed, 429)
        assert error["code"] == "overloaded" and "interactive request took its place" in error["message"]
        assert int(shed.headers["retry-after"]) >= 1
        held.release()
        assert [(await first).status_code, (await second).status_code] == [200, 200]
        assert queue_of(client).refused == {"shed": 1}


async def test_a_route_passes_an_overloaded_deployment_over_then_refuses_with_retry_after(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    async with serving(engine, tmp_path, max_size=0) as client:
        held = await hold(client)
        over = await client.post("/v1/chat/completions", json=body(ROUTE))
        assert over.status_code == 200, over.text
        assert over.headers["x-penstock-route"] == "small; reason=default,fallback:big:overloaded"
        assert over.json()["model"] == ROUTE
        small = await hold(client, SMALL)
        refused = await client.post("/v1/chat/completions", json=body(ROUTE, stream=True))
        error = assert_openai_error(refused, 429)  # a stream refused before it began: a plain 429
        assert error["code"] == "overloaded" and "big:overloaded, small:overloaded" in error["message"]
        assert refused.headers["retry-after"] == "1"
        held.release()
        small.release()
        again = await client.post("/v1/chat/completions", json=body(ROUTE))
        assert again.headers["x-penstock-route"] == "big; reason=default"
        metrics = (await client.get("/metrics")).text
    # Each refusal counted where it was made: big refused the first request when asked before any work and
    # again in the ladder (small took it), then the last before any work, as small did.
    assert 'penstock_queue_refused_total{deployment="big",reason="full"} 3.0' in metrics
    assert 'penstock_queue_refused_total{deployment="small",reason="full"} 1.0' in metrics


def test_a_tenant_held_to_the_batch_tier_runs_every_request_there() -> None:
    batch_tenant = Caller("k", "nightly-jobs", tenant_limits=TenantLimits(max_priority="batch"))
    assert priority_of("interactive", batch_tenant) == "batch"
    assert priority_of("interactive", Caller("k", "people")) == "interactive"
    assert priority_of("batch", Caller("k", "people")) == "batch"


async def test_a_request_every_deployment_would_refuse_is_refused_before_any_work(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Here the work skipped is retrieval, which this server (no database) could not do: a 503 otherwise."""
    async with serving(engine, tmp_path, max_size=0) as client:
        rag = body(penstock={"collections": ["docs"]})
        assert assert_openai_error(await client.post("/v1/chat/completions", json=rag), 503)
        held = await hold(client)
        refused = await client.post("/v1/chat/completions", json=rag)
        assert assert_openai_error(refused, 429)["code"] == "overloaded" and "retry-after" in refused.headers
        small = await hold(client, SMALL)
        refused = await client.post("/v1/chat/completions", json=body(ROUTE, penstock={"collections": ["docs"]}))
        error = assert_openai_error(refused, 429)
        assert "every deployment for 'chat' is overloaded (big:overloaded, small:overloaded)" in error["message"]
        held.release()
        small.release()
