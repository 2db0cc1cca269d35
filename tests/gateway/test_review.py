"""The review sample: the configured fraction of answered requests, redacted, readable by admin keys only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import ObservabilityConfig, Settings
from penstock.engine.served import ServedModel
from penstock.observability.review import ReviewSampler
from penstock.store.review import ReviewSample
from penstock.types import Prepared
from tests.gateway.conftest import ADMIN_KEY, MODEL
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key
from tests.gateway.test_usage import ledger_rows

SECRET_MAIL, SECRET_CARD = "jane.doe@example.com", "4111 1111 1111 1111"


@pytest.fixture
async def sampling(
    request: pytest.FixtureRequest,
    database_url: str,
    served: dict[str, ServedModel],
    registry: CollectorRegistry,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose review_sample_rate is the test's parameter."""
    rate = request.param
    settings = Settings(
        home=tmp_path,
        admin_key=ADMIN_KEY,
        database_url=database_url,
        observability=ObservabilityConfig(review_sample_rate=rate),
    )
    app = build_app(settings, served, registry)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=headers) as client:
            yield client


@pytest.mark.parametrize("sampling", [1.0], indirect=True)
async def test_samples_are_redacted_and_only_admins_read_them(sampling: httpx.AsyncClient) -> None:
    client = sampling
    key = await new_key(client)
    content = f"My card is {SECRET_CARD} and my mail {SECRET_MAIL};\u0000 say ok."  # PostgreSQL holds no NUL
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 3, "temperature": 0}
    answer = (await client.post("/v1/chat/completions", json=body, headers=as_key(key))).json()
    async with asyncio.timeout(10):
        while not (samples := (await client.get("/admin/review")).json()["data"]):
            await asyncio.sleep(0.1)
    [sample] = samples
    assert sample["request_id"] == answer["id"].removeprefix("chatcmpl-") and sample["tenant"] == "acme"
    [message] = sample["prompt"]
    assert message["role"] == "user" and "; say ok" in message["content"]
    assert SECRET_CARD not in message["content"] and SECRET_MAIL not in message["content"]
    assert sample["completion"] == answer["choices"][0]["message"]["content"]
    assert_openai_error(await client.get("/admin/review", headers=as_key(key)), 403)


@pytest.mark.parametrize("sampling", [1.0], indirect=True)
async def test_a_tenant_admin_reads_only_its_own_tenants_samples(sampling: httpx.AsyncClient) -> None:
    client = sampling
    alpha, beta = await new_key(client, "alpha", admin=True), await new_key(client, "beta")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    for key in (alpha, beta):
        assert (await client.post("/v1/chat/completions", json=body, headers=as_key(key))).status_code == 200
    async with asyncio.timeout(10):
        while len((await client.get("/admin/review")).json()["data"]) < 2:  # the master key sees both
            await asyncio.sleep(0.1)
    own = (await client.get("/admin/review", headers=as_key(alpha))).json()["data"]
    assert [s["tenant"] for s in own] == ["alpha"]
    assert_openai_error(await client.get("/admin/review", params={"tenant": "beta"}, headers=as_key(alpha)), 403)


@pytest.mark.parametrize("sampling", [0.0], indirect=True)
async def test_nothing_is_sampled_at_rate_zero(sampling: httpx.AsyncClient, database_url: str) -> None:
    client = sampling
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    assert len(await ledger_rows(database_url, 3)) == 3
    await asyncio.sleep(1.5)  # past the sampler's flush interval (1 s)
    assert (await client.get("/admin/review")).json()["data"] == []


def test_a_draw_beyond_the_bound_of_waiting_samples_is_skipped() -> None:
    sampler = ReviewSampler(None, rate=1.0, max_pending=2)  # type: ignore[arg-type]  # never written
    for _ in range(3):
        sampler.offer(None, "chat.completions", "ok")  # type: ignore[arg-type]  # not read until written
    assert (sampler.pending, sampler.skipped) == (2, 1)


class Samples:
    """A review store in memory whose first write hangs until cancelled, when `hang` is set."""

    def __init__(self, hang: bool = False) -> None:
        self.written: list[ReviewSample] = []
        self.hang = hang

    async def insert(self, samples: list[ReviewSample]) -> None:
        if self.hang:
            self.hang = False
            await asyncio.sleep(3600)
        self.written += samples


def drawn(request_id: str, prompt: str) -> Prepared:
    request = SimpleNamespace(request_id=request_id, raw_prompt=prompt, caller=SimpleNamespace(tenant="acme"))
    return SimpleNamespace(request=request, decision=SimpleNamespace(deployment="small"))  # type: ignore[return-value]


@pytest.mark.parametrize("hang", [False, True], ids=["waiting", "being written"])
async def test_samples_waiting_or_being_written_at_stop_are_written_redacted(hang: bool) -> None:
    store = Samples(hang)
    sampler = ReviewSampler(store, rate=1.0, flush_s=0.01 if hang else 3600)  # type: ignore[arg-type]
    sampler.start()
    sampler.offer(drawn("r1", f"mail me at {SECRET_MAIL}"), "completions", "ok")
    await asyncio.sleep(0.05)  # with `hang`, the periodic write has taken it and hangs
    await sampler.stop()
    assert [(s.request_id, s.prompt) for s in store.written] == [
        ("r1", [{"role": "prompt", "content": "mail me at [EMAIL]"}])
    ]
