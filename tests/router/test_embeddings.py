"""/v1/embeddings proxied to a remote deployment: replicas that fail, refuse or answer in the wrong shape
(tests/router/fault_upstream.py) are routed around or reported, never passed on as an answer. A real
`penstock worker` as the upstream: tests/cli/test_worker.py."""

from __future__ import annotations

from pathlib import Path

import httpx

from penstock.config import BreakerConfig, DeploymentConfig, RouterConfig, Settings, UpstreamConfig
from tests.router.fault_upstream import Upstream
from tests.router.test_ladder import FAST, SLOW_CHECKS, gateway
from tests.router.test_ladder import upstreams as upstreams  # a fixture

TEXTS = ["Paris is the capital of France.", "A penstock carries water to a turbine."]


def pair(first: Upstream, second: Upstream, home: Path, breaker: BreakerConfig | None = None) -> Settings:
    urls = [first.url, second.url]
    breaker = breaker or BreakerConfig()
    upstream = UpstreamConfig(urls=urls, model="fault-embed", timeouts=FAST, health=SLOW_CHECKS, breaker=breaker)
    return Settings(
        home=home,
        deployments=[DeploymentConfig(name="embed", backend="openai", upstream=upstream)],
        router=RouterConfig(backoff_s=0),
    )


async def embed(client: httpx.AsyncClient, model: str, **extra: object) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": model, "input": TEXTS, **extra})


async def test_a_failing_replica_is_routed_around(upstreams: tuple[Upstream, Upstream], tmp_path: Path) -> None:
    failing, working = upstreams
    failing.fault = "status_503"
    # The first failure opens a replica's circuit: what is routed around is then out of rotation.
    settings = pair(failing, working, tmp_path, BreakerConfig(consecutive_failures=1, open_s=30))
    async for client in gateway(settings):
        answers = [await embed(client, "embed", encoding_format="float") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    body = answers[0].json()
    # The upstream's vectors in the client's order (it sent them reversed), its token count billed.
    assert [row["embedding"] for row in body["data"]] == [[float(len(t)), 1.0] for t in TEXTS]
    assert body["usage"] == {"prompt_tokens": 14, "total_tokens": 14} and body["model"] == "embed"
    assert working.calls == 4 and working.bodies[0]["model"] == "fault-embed"
    assert failing.calls <= 1  # tried once at most, then its circuit was open


async def test_a_wrong_answer_or_a_refusal_is_an_error_not_vectors(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    first, second = upstreams
    settings = pair(first, second, tmp_path)
    async for client in gateway(settings):
        first.fault = second.fault = "malformed"  # one vector short, from both replicas
        short = await embed(client, "embed")
        first.fault = second.fault = "status_400"  # the client's mistake: the same on any replica
        refused = await embed(client, "embed", dimensions=3)
        unknown = await embed(client, "no-such-model")
    assert short.status_code == 503 and "embed:protocol" in short.json()["error"]["message"]
    assert refused.status_code == 400 and "injected 400" in refused.json()["error"]["message"]
    assert first.calls + second.calls == 2 + 1  # the bad shape was tried on both, the refusal on one only
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
