"""The fallback ladder against upstreams that fail on purpose (tests/router/fault_upstream.py): what moves
a request to the next rung, what ends a stream with an error event, and what the retry budget allows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from penstock.app import build_app
from penstock.config import (
    BreakerConfig,
    DeploymentConfig,
    HealthCheckConfig,
    RouteConfig,
    RouterConfig,
    Settings,
    UpstreamConfig,
    UpstreamTimeouts,
)
from tests.router.fault_upstream import Upstream, running_upstream

QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}
FAST = UpstreamTimeouts(connect_s=1, first_token_s=0.5, between_tokens_s=0.5, total_s=10)
SLOW_CHECKS = HealthCheckConfig(interval_s=30)  # these tests watch the breaker, not the health checks


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with running_upstream() as primary, running_upstream() as backup:
        yield primary, backup


def remote(name: str, upstream: Upstream, breaker: BreakerConfig | None = None) -> DeploymentConfig:
    config = UpstreamConfig(
        urls=[upstream.url], model="fault", timeouts=FAST, health=SLOW_CHECKS, breaker=breaker or BreakerConfig()
    )
    return DeploymentConfig(name=name, backend="openai", upstream=config)


async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings, {}, with_database=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


@pytest.fixture
async def client(upstreams: tuple[Upstream, Upstream], tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    primary, backup = upstreams
    settings = Settings(
        home=tmp_path,
        deployments=[remote("primary", primary), remote("backup", backup)],
        routes=[RouteConfig(name="chat", ladder=["primary", "backup"])],
        router=RouterConfig(backoff_s=0),
    )
    async for client in gateway(settings):
        yield client


async def ask(client: httpx.AsyncClient, model: str = "chat", **extra: object) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": model, **QUESTION, **extra})


def sse_payloads(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("fault", ["status_500", "status_429", "status_503", "slow_first", "malformed", "drop_first"])
async def test_a_failure_before_the_first_token_moves_to_the_next_rung(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream], fault: str
) -> None:
    primary, backup = upstreams
    # drop_first: the connection dropped before any token, so the ladder may still move on
    primary.fault, primary.delay_s = ("drop_at_0" if fault == "drop_first" else fault), 2.0
    for stream in (False, True):
        response = await ask(client, stream=stream)
        assert response.status_code == 200, response.text
        route = response.headers["x-penstock-route"]
        assert route.startswith("backup; reason=default,fallback:primary:"), route
        text = response.text if stream else response.json()["choices"][0]["message"]["content"]
        assert "Paris" in text
    assert primary.calls == 2 and backup.calls == 2
    kinds = {"slow_first": "timeout", "malformed": "protocol", "drop_first": "dropped"}
    assert route.endswith(kinds.get(fault, fault)), route


async def test_the_upstream_is_sent_the_conversation_and_its_usage_is_kept(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    response = await ask(client, temperature=0, seed=7)
    body = response.json()
    assert response.headers["x-penstock-route"] == "primary; reason=default"
    assert body["model"] == "chat"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
    sent = upstreams[0].bodies[-1]
    assert sent["model"] == "fault" and sent["messages"] == QUESTION["messages"]
    assert (sent["stream"], sent["temperature"], sent["seed"], sent["max_tokens"]) == (True, 0, 7, 16)


@pytest.mark.parametrize("fault", ["wrong_usage", "no_usage"])
async def test_missing_or_implausible_usage_is_counted_with_the_deployments_tokenizer(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream], fault: str
) -> None:
    upstreams[0].fault = fault
    usage = (await ask(client)).json()["usage"]
    assert 10 < usage["prompt_tokens"] < 60  # the SmolLM2 template around the question
    assert 4 <= usage["completion_tokens"] <= 12  # "The capital of France is Paris." counted here
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_a_stream_cut_after_its_first_token_ends_with_an_error_event(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    primary, backup = upstreams
    primary.fault = "drop_mid"
    response = await ask(client, stream=True)
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "upstream_error" and "broke the connection" in error["message"]
    words = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, payloads[:-2]) if c.get("choices")
    )
    assert words == "The capital of "  # what came before the cut, and nothing from another rung
    assert backup.calls == 0


async def test_a_whole_answer_cut_part_way_begins_again_elsewhere(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    """Not streamed, the client has seen nothing of a cut answer: it is asked again of another target, once."""
    primary, backup = upstreams
    primary.fault = "drop_mid"
    whole = await ask(client)
    assert (
        whole.status_code == 200
        and whole.json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
    )
    assert whole.headers["x-penstock-route"] == "backup; reason=default,restart:primary,fallback:primary:unavailable"
    assert (primary.calls, backup.calls) == (1, 1)
    assert whole.json()["usage"]["total_tokens"] == 17  # the answer given (backup's own count), not the cut one
    backup.fault = "drop_mid"  # cut again on the second target: once is all, then a 502 in OpenAI's shape
    again = await ask(client)
    assert again.status_code == 502 and again.json()["error"]["code"] == "upstream_error"
    assert (primary.calls, backup.calls) == (2, 2)


async def test_a_request_deadline_cuts_the_upstream_wait_short(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    primary, backup = upstreams
    primary.fault, primary.delay_s = "slow_first", 2.0  # the deadline passes before first_token_s (0.5 s)
    started = asyncio.get_running_loop().time()
    response = await client.post(
        "/v1/chat/completions", json={"model": "chat", **QUESTION}, headers={"x-penstock-deadline-ms": "200"}
    )
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    assert asyncio.get_running_loop().time() - started < 1.5
    assert backup.calls == 0  # no time left for a fallback


async def test_a_deployment_that_keeps_refusing_is_mostly_spared_and_the_next_rung_answers(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    primary, backup = upstreams
    primary.fault = "status_429"
    patient = BreakerConfig(consecutive_failures=1000, min_calls=1000)  # the throttle alone, not the breaker
    settings = Settings(
        home=tmp_path,
        deployments=[remote("primary", primary, patient), remote("backup", backup)],
        routes=[RouteConfig(name="chat", ladder=["primary", "backup"])],
        router=RouterConfig(backoff_s=0),
    )
    async for client in gateway(settings):
        statuses = [(await ask(client)).status_code for _ in range(60)]
        metrics = (await client.get("/metrics")).text
    assert backup.calls == statuses.count(200)  # what was answered, the next rung answered
    # Sent on, a 429 moves a request to the next rung only as a retry the budget allows (else it is a 503);
    # kept back, it moves for free. Once the throttle holds (after ten), nearly all are kept back.
    assert primary.calls < 30 and statuses[-20:].count(200) >= 15
    assert f'penstock_upstream_throttled_total{{deployment="primary"}} {60 - primary.calls}.0' in metrics


async def test_a_client_mistake_is_not_retried_elsewhere(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    primary, backup = upstreams
    primary.fault = "status_400"
    response = await ask(client)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_refused"
    assert backup.calls == 0


async def test_every_rung_failing_is_a_503_with_retry_after(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    for upstream in upstreams:
        upstream.fault = "status_500"
    response = await ask(client)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "no_deployment_available"
    assert "primary:status_500" in error["message"] and "backup:status_500" in error["message"]


async def test_the_retry_budget_holds_under_a_failing_upstream(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    """Every call fails and no breaker opens: retries stay within 10% of requests (plus the window's two), and
    the throttle keeps most requests from being sent at all."""
    never_open = BreakerConfig(consecutive_failures=10_000, min_calls=10_000, window=10_000)
    primary, backup = upstreams
    primary.fault = backup.fault = "status_500"
    settings = Settings(
        home=tmp_path,
        deployments=[remote("primary", primary, never_open), remote("backup", backup, never_open)],
        routes=[RouteConfig(name="chat", ladder=["primary", "backup"])],
        router=RouterConfig(backoff_s=0, retry_window_s=600),
    )
    requests = 200
    async for client in gateway(settings):
        statuses = [(await ask(client)).status_code for _ in range(requests)]
    assert set(statuses) == {503}
    calls = primary.calls + backup.calls
    assert calls <= 1.1 * requests + RouterConfig().min_retries  # the budget's bound on extra calls
    assert calls < requests / 2  # and the adaptive throttle kept most of the load off upstreams refusing it all


async def test_the_breaker_opens_probes_and_closes(upstreams: tuple[Upstream, Upstream], tmp_path: Path) -> None:
    primary, backup = upstreams
    breaker = BreakerConfig(consecutive_failures=3, open_s=0.5)
    settings = Settings(
        home=tmp_path,
        deployments=[remote("primary", primary, breaker), remote("backup", backup)],
        routes=[RouteConfig(name="chat", ladder=["primary", "backup"])],
        router=RouterConfig(backoff_s=0, min_retries=100),
    )
    async for client in gateway(settings):
        primary.fault = "status_500"
        for _ in range(3):
            assert (await ask(client)).headers["x-penstock-route"].startswith("backup")
        assert primary.calls == 3
        opened = (await ask(client)).headers["x-penstock-route"]
        assert opened.startswith("backup; reason=default,fallback:primary:unavailable")
        assert primary.calls == 3  # open: not called at all
        metrics = (await client.get("/metrics")).text
        assert f'penstock_upstream_breaker_state{{deployment="primary",replica="{primary.url}"}} 2.0' in metrics
        primary.fault = "none"
        await _until_routed_to(client, "primary")  # after open_s, the probe succeeds and closes it
        assert (await ask(client)).headers["x-penstock-route"] == "primary; reason=default"
        metrics = (await client.get("/metrics")).text
        assert f'penstock_upstream_breaker_state{{deployment="primary",replica="{primary.url}"}} 0.0' in metrics


async def _until_routed_to(client: httpx.AsyncClient, deployment: str, timeout_s: float = 5) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if (await ask(client)).headers["x-penstock-route"].startswith(f"{deployment};"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never routed to {deployment}")


async def test_a_circuit_one_gateway_opens_is_open_in_another_through_redis(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path, redis_url: str
) -> None:
    import asyncio

    primary, backup = upstreams
    breaker = BreakerConfig(consecutive_failures=2, open_s=30)

    def settings(home: str) -> Settings:
        return Settings(
            home=tmp_path / home,
            redis_url=redis_url,
            deployments=[remote("primary", primary, breaker), remote("backup", backup)],
            routes=[RouteConfig(name="chat", ladder=["primary", "backup"])],
            router=RouterConfig(backoff_s=0, min_retries=100),
        )

    state = f'penstock_upstream_breaker_state{{deployment="primary",replica="{primary.url}"}}'
    async for one in gateway(settings("one")):
        async for other in gateway(settings("other")):
            primary.fault = "status_500"
            for _ in range(2):
                await ask(one)
            assert f"{state} 2.0" in (await one.get("/metrics")).text
            calls = primary.calls
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 1.0
            while f"{state} 2.0" not in (await other.get("/metrics")).text:
                assert loop.time() < deadline, "the other gateway's circuit did not open within a second"
                await asyncio.sleep(0.02)
            response = await ask(other)
            assert response.headers["x-penstock-route"].startswith(
                "backup; reason=default,fallback:primary:unavailable"
            )
            assert primary.calls == calls  # the other gateway never called the failing replica


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_ANSWER = {"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}}


async def test_a_native_upstream_is_sent_the_response_format(
    client: httpx.AsyncClient, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[0].fault = "json"
    response = await ask(client, **JSON_ANSWER)
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"city": "Paris"}
    sent = upstreams[0].bodies[-1]
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA


def validating(primary: Upstream, home: Path) -> Settings:
    """One deployment on `primary` with `structured_output: validate`."""
    config = remote("primary", primary)
    upstream = config.upstream.model_copy(update={"structured_output": "validate"})
    return Settings(home=home, deployments=[config.model_copy(update={"upstream": upstream})])


@pytest.mark.parametrize("fault", ["json", "json_second", "json_never"])
async def test_an_upstream_without_structured_output_is_checked_and_asked_again_once(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path, fault: str
) -> None:
    primary = upstreams[0]
    primary.fault = fault
    async for client in gateway(validating(primary, tmp_path)):
        response = await ask(client, "primary", **JSON_ANSWER)
        metrics = (await client.get("/metrics")).text
    assert "response_format" not in primary.bodies[0]
    assert '"required": ["city"]' in primary.bodies[0]["messages"][0]["content"]  # the schema, stated
    outcome = {"json": "valid", "json_second": "repaired", "json_never": "invalid"}[fault]
    assert f'penstock_structured_output_total{{deployment="primary",outcome="{outcome}"}} 1.0' in metrics
    if fault == "json_never":
        assert response.status_code == 503 and "primary:schema" in response.json()["error"]["message"]
        return
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"city": "Paris"}
    calls = 1 if fault == "json" else 2
    assert primary.calls == calls
    assert response.json()["usage"]["total_tokens"] == 35 * calls  # both calls were the upstream's work


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("fault", ["call", "call_second", "call_never"])
async def test_an_upstream_without_tools_is_told_of_them_and_its_calls_checked(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path, fault: str
) -> None:
    primary = upstreams[0]
    primary.fault = fault
    async for client in gateway(validating(primary, tmp_path)):
        whole = await ask(client, "primary", tools=[WEATHER])
        streamed = await ask(client, "primary", tools=[WEATHER], stream=True)
        metrics = (await client.get("/metrics")).text
    sent = primary.bodies[0]
    assert "tools" not in sent and "tool_choice" not in sent
    assert "get_weather" in sent["messages"][0]["content"]  # the tools, described in the conversation
    outcome = {"call": "valid", "call_second": "repaired", "call_never": "invalid"}[fault]
    assert f'penstock_structured_output_total{{deployment="primary",outcome="{outcome}"}} 2.0' in metrics
    if fault == "call_never":
        assert whole.status_code == 503 and "primary:tool_call" in whole.json()["error"]["message"]
        assert "do not match its schema" in primary.bodies[1]["messages"][-1]["content"]  # what was wrong, said
        # Settled once, when the ladder gave up: one count per request, not a second as a refusal.
        counts = [line for line in metrics.splitlines() if line.startswith("penstock_requests_total{")]
        assert len(counts) == 1 and counts[0].endswith(" 2.0")  # the whole one and the streamed one, once each
        assert 'deployment="primary"' in counts[0]  # as the ladder settled it (a refusal names no deployment)
        return
    message = whole.json()["choices"][0]["message"]
    assert whole.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == "Let me look that up. "  # the prose before the call stays the answer's text
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("get_weather", {"city": "Paris"})
    ]
    chunks = [json.loads(p) for p in sse_payloads(streamed.text) if p != "[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert any(d.get("tool_calls") for d in deltas) and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_sibling_takes_over_from_a_dead_replica_without_spending_retries(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    """Refused connections did no work: failing over to a live replica is not a retry the budget counts."""
    from tests.helpers import free_port

    live = upstreams[0]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    upstream = UpstreamConfig(
        urls=[dead, live.url], model="fault", timeouts=FAST, health=SLOW_CHECKS, affinity_tokens=0
    )
    settings = Settings(
        home=tmp_path,
        deployments=[DeploymentConfig(name="pair", backend="openai", upstream=upstream)],
        router=RouterConfig(backoff_s=0, retry_ratio=0, min_retries=0),  # no retries at all
    )
    async for client in gateway(settings):
        statuses = [(await ask(client, "pair")).status_code for _ in range(6)]
    assert statuses == [200] * 6
    assert live.calls == 6


async def test_a_replica_that_does_not_serve_the_model_fails_its_health_check(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    """Its model list is read: a deployment whose upstream.model was left unset (it names itself) is out of
    rotation before any request meets the upstream's 404, and the log says why."""
    upstream = UpstreamConfig(urls=[upstreams[0].url], timeouts=FAST)  # no model: asks for "unnamed"
    settings = Settings(
        home=tmp_path,
        deployments=[DeploymentConfig(name="unnamed", backend="openai", upstream=upstream)],
        router=RouterConfig(backoff_s=0),
    )
    with capture_logs() as logs:
        async for client in gateway(settings):
            await until_metric(client, 'penstock_upstream_healthy{deployment="unnamed"', " 0.0")  # the first check
            response = await ask(client, "unnamed")
    assert response.status_code == 503 and "unnamed:unavailable" in response.json()["error"]["message"]
    assert upstreams[0].calls == 0  # never sent a request it would have refused
    warned = next(entry for entry in logs if entry["event"] == "replica_unhealthy")
    assert "does not serve the model 'unnamed'" in warned["problem"] and "fault" in warned["problem"]


async def until_metric(client: httpx.AsyncClient, series: str, ending: str, timeout_s: float = 10) -> None:
    """Poll /metrics until the line starting `series` ends with `ending`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        lines = (await client.get("/metrics")).text.splitlines()
        if any(line.startswith(series) and line.endswith(ending) for line in lines):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{series} never ended with {ending}")
