"""The control plane: deployments and routes written through one replica's admin API, kept in PostgreSQL,
served by another replica of the same database within a second."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import Settings
from tests.router.fault_upstream import Upstream, running_upstream

ADMIN_KEY = "sk-test-admin-0123456789"
QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with running_upstream() as running:
        yield running


@pytest.fixture
async def replicas(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two gateway replicas on one database, no engine of their own."""
    clients = []
    apps = [
        build_app(Settings(home=tmp_path / n, admin_key=ADMIN_KEY, database_url=database_url), {}, CollectorRegistry())
        for n in "ab"
    ]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        for app in apps:
            clients.append(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://penstock", headers=headers)
            )
        yield clients[0], clients[1]
        for client in clients:
            await client.aclose()


def deployment(upstream: Upstream) -> dict:
    return {"name": "remote", "backend": "openai", "upstream": {"urls": [upstream.url], "model": "fault"}}


async def until(check, timeout_s: float = 1.0) -> float:
    """Seconds until `check()` (a coroutine function) is true; fails past `timeout_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.02)
    return loop.time() - start


async def test_a_route_written_on_one_replica_is_served_by_the_other_within_a_second(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], upstream: Upstream
) -> None:
    a, b = replicas
    assert (await a.put("/admin/deployments/remote", json=deployment(upstream))).status_code == 200

    async def b_knows_it() -> bool:  # a new deployment's first sight includes reading its tokenizer's file
        return "remote" in [m["id"] for m in (await b.get("/v1/models")).json()["data"]]

    await until(b_knows_it, timeout_s=10)
    route = {"name": "chat", "ladder": ["remote"]}
    assert (await a.put("/admin/routes/chat", json=route)).status_code == 200
    ask = {"model": "chat", **QUESTION}
    assert (await a.post("/v1/chat/completions", json=ask)).status_code == 200  # the writer applies it at once

    async def b_serves() -> bool:
        response = await b.post("/v1/chat/completions", json=ask)
        return response.status_code == 200 and response.headers["x-penstock-route"] == "remote; reason=default"

    await until(b_serves)
    assert "chat" in [m["id"] for m in (await b.get("/v1/models")).json()["data"]]
    assert [d["name"] for d in (await b.get("/admin/deployments")).json()["data"]] == ["remote"]

    deleted = await a.delete("/admin/routes/chat")
    assert deleted.status_code == 204, deleted.text

    async def b_forgot() -> bool:
        return (await b.post("/v1/chat/completions", json=ask)).status_code == 404

    await until(b_forgot)


async def test_writes_that_would_break_the_configuration_are_refused(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], upstream: Upstream
) -> None:
    a, _ = replicas
    dangling = await a.put("/admin/routes/chat", json={"name": "chat", "ladder": ["missing"]})
    assert dangling.status_code == 400 and "missing" in dangling.json()["error"]["message"]
    engine = await a.put("/admin/deployments/local", json={"name": "local"})
    assert engine.status_code == 400 and engine.json()["error"]["param"] == "backend"
    await a.put("/admin/deployments/remote", json=deployment(upstream))
    await a.put("/admin/routes/chat", json={"name": "chat", "ladder": ["remote"]})
    in_use = await a.delete("/admin/deployments/remote")
    assert in_use.status_code == 409
    assert (await a.delete("/admin/routes/nothing")).status_code == 404
    renamed = await a.put("/admin/routes/chat", json={"name": "other", "ladder": ["remote"]})
    assert renamed.status_code == 400


async def test_only_platform_admins_change_the_router(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], upstream: Upstream
) -> None:
    a, _ = replicas
    await a.post("/admin/tenants", json={"id": "acme"})
    tenant_admin = (await a.post("/admin/keys", json={"tenant": "acme", "admin": True})).json()["key"]
    response = await a.put(
        "/admin/deployments/remote", json=deployment(upstream), headers={"Authorization": f"Bearer {tenant_admin}"}
    )
    assert response.status_code == 403
