"""What a request leaves behind for operators: Prometheus series and an OpenTelemetry trace, per stage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from penstock.app import build_app
from penstock.config import Settings
from penstock.engine.served import ServedModel
from tests.gateway.conftest import ADMIN_KEY, MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "temperature": 0}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls)


async def test_a_request_shows_in_the_metrics_stage_by_stage(client: httpx.AsyncClient) -> None:
    usage = (await client.post("/v1/chat/completions", json=CHAT)).json()["usage"]
    await client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    found = samples((await client.get("/metrics")).text)

    ok = {"route": "chat.completions", "status": "ok"}
    assert value(found, "penstock_requests_total", **ok) == 1
    refused = value(found, "penstock_requests_total", status="refused", error_type="model_not_found")
    assert refused == 1
    for stage in ("gateway", "route", "context", "admission", "prefill", "decode", "post"):
        assert value(found, "penstock_stage_seconds_count", stage=stage, route="chat.completions") == 1, stage
    assert value(found, "penstock_request_seconds_count", **ok) == 1
    assert value(found, "penstock_request_time_to_first_token_seconds_count") == 1
    assert value(found, "penstock_time_per_output_token_seconds_count") == 1
    assert value(found, "penstock_tokens_total", direction="in") == usage["prompt_tokens"]
    assert value(found, "penstock_tokens_total", direction="out") == usage["completion_tokens"]
    # The HTTP view sees what never reached a handler too: the bad key.
    assert value(found, "penstock_http_responses_total", route="/v1/chat/completions", code="200") == 1
    assert value(found, "penstock_http_responses_total", route="/v1/chat/completions", code="404") == 1
    assert value(found, "penstock_http_responses_total", route="/v1/models", code="401") == 1


@pytest.fixture
async def traced(
    database_url: str, served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url)
    app = build_app(settings, served, registry, span_exporter=exporter)
    yield app, exporter


async def run_traced(app: FastAPI, *bodies: dict[str, object]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    async with app.router.lifespan_context(app):  # leaving it flushes the spans to the exporter
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=headers) as client:
            for body in bodies:
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_is_one_trace_under_the_clients_traceparent(
    traced: tuple[FastAPI, InMemorySpanExporter], stream: bool
) -> None:
    app, exporter = traced
    await run_traced(app, {**CHAT, "stream": stream})
    spans = by_name(exporter.get_finished_spans())
    [root] = spans.pop("POST /v1/chat/completions")
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.output_tokens"] == 4
    assert root.attributes["penstock.deployment"] == MODEL
    assert {"gateway", "route", "context", "admission", "prefill", "decode"} <= set(spans)
    for [stage] in spans.values():
        assert stage.parent is not None and stage.parent.span_id == root.context.span_id
        assert stage.start_time is not None and root.start_time is not None
        assert root.start_time <= stage.start_time <= (stage.end_time or 0) <= (root.end_time or 0)
    assert spans["prefill"][0].end_time <= spans["decode"][0].start_time  # type: ignore[operator]
