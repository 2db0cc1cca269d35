"""A load run whose prompts carry personal data and secrets leaves none of them in anything Penstock writes.

1,000 requests, each with its own planted e-mail, card number, phone number and API key (in the
prompt, and for some in the model name, a bad JSON schema or a feedback comment, so that they reach
error messages too); then every log line, span, review sample, ledger and feedback row and response
body is searched for each planted value.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from stdnum import luhn

from penstock.app import build_app
from penstock.config import ObservabilityConfig, Settings
from penstock.engine.served import ServedModel
from penstock.observability.logging import configure_logging
from penstock.store.database import connect
from tests.gateway.conftest import ADMIN_KEY, MODEL
from tests.gateway.test_usage import ledger_rows

REQUESTS, CONCURRENCY = 1000, 32


def planted(rng: random.Random, i: int) -> dict[str, str]:
    body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
    card = body + luhn.calc_check_digit(body)
    return {
        "email": f"user{i}.{rng.randrange(10**6)}@example.org",
        "card": " ".join(card[k : k + 4] for k in range(0, 16, 4)) if i % 2 else card,
        "phone": f"+1 415-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}",
        "key": "pk-"
        + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(43)),
    }


def request_body(i: int, secrets: dict[str, str]) -> tuple[str, dict[str, object]]:
    text = f"Hi, I am {secrets['email']}, card {secrets['card']}, call {secrets['phone']}, my key is {secrets['key']}."
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    if i % 10 == 1:  # an unknown model named with personal data: a 404 whose message quotes it
        return "chat", {**body, "model": secrets["email"]}
    if i % 10 == 2:  # a schema that is not one: a 400 whose message quotes the bad part
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": secrets["card"]}}}
        return "chat", {**body, "response_format": bad}
    if i % 10 == 3:
        return "chat", {**body, "stream": True}
    return "chat", body


@pytest.fixture
def json_logs() -> Iterator[None]:
    configure_logging("info")
    yield
    structlog.reset_defaults()


@pytest.fixture
async def traced_app(
    database_url: str, served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = Settings(
        home=tmp_path,
        admin_key=ADMIN_KEY,
        database_url=database_url,
        observability=ObservabilityConfig(review_sample_rate=1.0),
    )
    app = build_app(settings, served, registry, span_exporter=exporter)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=headers) as client:
            yield client, exporter


async def everything_written(database_url: str) -> str:
    lines: list[str] = []
    async with await connect(database_url, autocommit=True) as conn:
        for table in ("usage_ledger", "review_samples", "feedback"):
            rows = await (await conn.execute(f"SELECT * FROM {table}")).fetchall()
            lines += [json.dumps(row, default=str) for row in rows]
    return "\n".join(lines)


async def test_planted_personal_data_appears_nowhere(
    json_logs: None,
    traced_app: tuple[httpx.AsyncClient, InMemorySpanExporter],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, exporter = traced_app
    rng = random.Random(7)
    secrets = [planted(rng, i) for i in range(REQUESTS)]
    gate = asyncio.Semaphore(CONCURRENCY)
    bodies: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            _, body = request_body(i, secrets[i])
            response = await client.post("/v1/chat/completions", json=body)
            bodies.append(response.text)
            if response.status_code == 200 and i % 10 == 4:
                comment = {"request_id": response.headers["x-request-id"], "rating": -1, "comment": secrets[i]["email"]}
                feedback = await client.post("/v1/feedback", json=comment)
                bodies.append(feedback.text)

    await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    await ledger_rows(database_url, REQUESTS, timeout_s=30)  # every row flushed, and the samples with them
    await asyncio.sleep(0.5)
    statuses = [json.loads(b).get("error", {}).get("code") if b.startswith("{") else "stream" for b in bodies]
    assert statuses.count("model_not_found") == REQUESTS // 10  # the error paths were taken
    assert sum(1 for b in bodies if "is not a valid JSON schema" in b) == REQUESTS // 10

    spans = "\n".join(span.to_json() for span in exporter.get_finished_spans())
    written = "\n".join([capsys.readouterr().err, spans, await everything_written(database_url), *bodies])
    assert re.search(r'"event":\s*"request"', written) and "[EMAIL]" in written  # the search covers real output
    leaks = [(kind, value) for s in secrets for kind, value in s.items() if value in written]
    assert leaks == []
