"""GET /v1/usage (per tenant, by day and model) and POST /v1/feedback with the quality figures it feeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from penstock.store.database import connect
from tests.gateway.conftest import MODEL
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key
from tests.gateway.test_usage import ONE_TOKEN, ledger_rows


async def ask(client: httpx.AsyncClient, key: dict[str, Any]) -> tuple[str, dict[str, int]]:
    response = await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(key))
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.json()["usage"]


async def test_each_tenant_sees_its_own_usage_and_admins_see_all(client: httpx.AsyncClient, database_url: str) -> None:
    acme, globex = await new_key(client, "acme"), await new_key(client, "globex")
    usages = [(await ask(client, acme))[1] for _ in range(2)]
    await ask(client, globex)
    await client.post("/v1/chat/completions", json={**ONE_TOKEN, "model": "nope"}, headers=as_key(acme))
    await ledger_rows(database_url, 4)

    report = (await client.get("/v1/usage", headers=as_key(acme))).json()
    assert report["tenant"] == "acme" and report["end"] == datetime.now(UTC).date().isoformat()
    answered = next(line for line in report["data"] if line["deployment"] == MODEL)
    assert answered["requests"] == 2 and answered["errors"] == 0
    assert answered["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert answered["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    refused = next(line for line in report["data"] if line["deployment"] is None)
    assert (refused["requests"], refused["errors"], refused["model"]) == (1, 1, "nope")
    assert {line["tenant"] for line in report["data"]} == {"acme"}

    everyone = (await client.get("/v1/usage")).json()  # the admin key
    assert everyone["tenant"] is None and {line["tenant"] for line in everyone["data"]} == {"acme", "globex"}
    assert_openai_error(await client.get("/v1/usage", params={"tenant": "globex"}, headers=as_key(acme)), 403)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    past = (await client.get("/v1/usage", params={"end": yesterday}, headers=as_key(acme))).json()
    assert past["data"] == []
    assert_openai_error(await client.get("/v1/usage", params={"start": "2026-02-01", "end": "2026-01-01"}), 400)
    assert_openai_error(await client.get("/v1/usage", params={"start": "yesterday"}), 400)


async def test_feedback_feeds_the_quality_figures_and_its_comment_is_redacted(
    client: httpx.AsyncClient, database_url: str
) -> None:
    acme, globex = await new_key(client, "acme"), await new_key(client, "globex")
    good, bad, escalated, unrated = [(await ask(client, acme))[0] for _ in range(4)]
    theirs, _ = await ask(client, globex)
    verdicts = [
        {"request_id": good, "rating": 1},
        {"request_id": bad, "rating": -1, "comment": "wrong; mail me at jane.doe@example.com"},
        {"request_id": escalated, "rating": 0, "escalated": True},
    ]
    for verdict in verdicts:  # straight after the answers: before their ledger rows are flushed
        response = await client.post("/v1/feedback", json=verdict, headers=as_key(acme))
        assert response.status_code == 201, response.text
    assert_openai_error(
        await client.post("/v1/feedback", json={"request_id": theirs, "rating": 1}, headers=as_key(acme)), 404
    )
    assert_openai_error(
        await client.post("/v1/feedback", json={"request_id": "nope", "rating": 1}, headers=as_key(acme)), 404
    )
    assert_openai_error(
        await client.post("/v1/feedback", json={"request_id": good, "rating": 5}, headers=as_key(acme)), 400
    )
    await ledger_rows(database_url, 5)

    [quality] = (await client.get("/v1/usage", headers=as_key(acme))).json()["quality"]
    assert (quality["deployment"], quality["requests"], quality["rated"]) == (MODEL, 4, 3)
    assert quality["task_success_rate"] == 0.5  # good and unrated; bad and escalated are not successes
    assert quality["escalation_rate"] == 0.25
    assert quality["negative_feedback_rate"] == round(1 / 3, 4)
    assert quality["cost_per_successful_request"] is not None
    async with await connect(database_url, autocommit=True) as conn:
        [comment] = await (await conn.execute("SELECT comment FROM feedback WHERE request_id = %s", (bad,))).fetchone()  # type: ignore[misc]
    assert "jane.doe@example.com" not in comment and "wrong" in comment
    metrics = (await client.get("/metrics")).text
    assert (
        'penstock_feedback_total{deployment="smollm2-135m-instruct",escalated="false",verdict="negative"} 1.0'
        in metrics
    )
    assert unrated not in metrics
