"""The ledger stays exact through a PostgreSQL outage: one row per request served, none lost, none twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import Settings
from penstock.engine.served import ServedModel
from penstock.store.embedded import EmbeddedPostgres
from penstock.store.ledger_spool import LedgerSpool
from tests.gateway.conftest import ADMIN_KEY
from tests.gateway.test_usage import ONE_TOKEN, ledger_rows

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.1)


async def serve_requests(app: FastAPI, count: int) -> list[str]:
    """`count` requests, half of them streamed, all answered; their request ids."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=HEADERS) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json={**ONE_TOKEN, "stream": i % 2 == 1}) for i in range(count))
        )
    assert [r.status_code for r in responses] == [200] * count
    return [r.headers["x-request-id"] for r in responses]


async def test_postgres_stopped_and_restarted_midway_leaves_one_row_per_request(
    served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    url = server.start()
    settings = Settings(home=tmp_path / "home", admin_key=ADMIN_KEY, database_url=url)
    spool = LedgerSpool(settings.data_dir / "spool" / "ledger.jsonl")
    served_ids: list[str] = []
    try:
        app = build_app(settings, served, registry)
        async with app.router.lifespan_context(app):
            served_ids += await serve_requests(app, 8)
            await asyncio.sleep(1.0)  # flushed: these are in
            server.stop()
            served_ids += await serve_requests(app, 8)  # answered all the same; their rows go to the spool
            await until(spool.pending)
            url = server.start()  # back, at the same address
            served_ids += await serve_requests(app, 8)
            rows = await ledger_rows(url, len(served_ids), timeout_s=30)
            assert sorted(r["request_id"] for r in rows) == sorted(served_ids)
            server.stop()  # down again, and the service shuts down while it is
            served_ids += await serve_requests(app, 4)
        assert spool.pending()  # what the shutdown could not write waits on disk
        url = server.start()
        app = build_app(settings, served, registry)
        async with app.router.lifespan_context(app):  # the next run replays it
            rows = await ledger_rows(url, len(served_ids), timeout_s=30)
        await asyncio.sleep(0.5)
        rows = await ledger_rows(url, len(served_ids) + 1, timeout_s=0)
    finally:
        server.stop()
    assert sorted(r["request_id"] for r in rows) == sorted(served_ids)  # exactly one row each
    assert not spool.pending()
