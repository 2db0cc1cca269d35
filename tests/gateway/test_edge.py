import asyncio

import httpx
from prometheus_client import CollectorRegistry

from penstock.gateway.edge import HttpMetrics
from tests.gateway.conftest import MODEL
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import QUESTION, as_key, new_key
from tests.gateway.test_usage import ONE_TOKEN, ledger_rows


def responses(registry: CollectorRegistry, code: str) -> float | None:
    labels = {"method": "POST", "route": "/v1/chat/completions", "code": code}
    return registry.get_sample_value("penstock_http_responses_total", labels)


async def test_an_exchange_is_counted_at_the_next_loop_turn_or_when_a_scrape_asks() -> None:
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    metrics.observe("POST", "/v1/chat/completions", 200, 0.01)
    metrics.observe("POST", "/v1/chat/completions", 429, 0.002)
    assert responses(registry, "200") is None  # still this turn
    metrics.observe_pending()
    assert responses(registry, "200") == 1 and responses(registry, "429") == 1
    labels = {"method": "POST", "route": "/v1/chat/completions"}
    assert registry.get_sample_value("penstock_http_request_seconds_count", labels) == 2


def test_without_a_running_loop_an_exchange_is_counted_at_once() -> None:
    registry = CollectorRegistry()
    HttpMetrics(registry).observe("POST", "/v1/chat/completions", 200, 0.01)
    assert responses(registry, "200") == 1


# --- Request ids are ours (audit finding 1: a client-chosen id was the ledger, slot and feedback key) ---


async def test_every_request_id_is_ours_and_the_clients_is_echoed_as_a_label(client: httpx.AsyncClient) -> None:
    given = await client.get("/v1/models", headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] != "trace-42" and len(given.headers["x-request-id"]) == 32
    assert given.headers["x-client-request-id"] == "trace-42"
    labelled = await client.get("/v1/models", headers={"x-client-request-id": "mine-7"})
    assert labelled.headers["x-client-request-id"] == "mine-7"
    insane = await client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert "x-client-request-id" not in insane.headers and len(insane.headers["x-request-id"]) == 32


async def test_requests_sharing_a_client_id_are_each_billed_and_refused_by_the_budget(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await client.post("/admin/tenants", json={"id": "acme", "limits": {"daily_tokens": 60}})
    key = await new_key(client)
    statuses = []
    for _ in range(6):  # each asks for ~35 tokens; the audit's twelve on a 300-token budget were all answered
        response = await client.post(
            "/v1/chat/completions", json=ONE_TOKEN, headers={**as_key(key), "x-request-id": "same"}
        )
        statuses.append(response.status_code)
    assert 429 in statuses, statuses
    rows = await ledger_rows(database_url, 6)
    assert len({row["request_id"] for row in rows}) == 6


async def test_parallel_requests_sharing_a_client_id_cannot_pass_the_in_flight_cap(client: httpx.AsyncClient) -> None:
    key = await new_key(client, max_concurrent=2)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    headers = {**as_key(key), "x-request-id": "one-id"}
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body, headers=headers) for _ in range(6))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) <= 2 and codes.count(429) >= 4, codes


async def test_another_tenants_request_id_cannot_take_its_feedback(client: httpx.AsyncClient) -> None:
    alpha, beta = await new_key(client, "alpha"), await new_key(client, "beta")
    answered = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(beta))
    beta_id = answered.headers["x-request-id"]
    await client.post("/v1/chat/completions", json=ONE_TOKEN, headers={**as_key(alpha), "x-request-id": beta_id})
    verdict = {"request_id": beta_id, "rating": 1}
    assert (await client.post("/v1/feedback", json=verdict, headers=as_key(beta))).status_code == 201
    assert_openai_error(await client.post("/v1/feedback", json=verdict, headers=as_key(alpha)), 404)
