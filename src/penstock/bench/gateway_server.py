"""The gateway as `penstock serve` builds it, with an instant model behind it: what `bench gateway` loads.

Everything in front of the model is real: auth against the key cache, rate limits (in process, or
Redis with --redis-url), validation and token counting with SmolLM2's own tokenizer and template,
request logs, the usage ledger in PostgreSQL. Only generation is replaced, by one token at once, so
what the benchmark measures is the gateway's own cost.

Run as `python -m penstock.bench.gateway_server --port P --home DIR [--redis-url URL]`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from pydantic import SecretStr

from penstock.app import build_app
from penstock.config import DeploymentConfig, ObservabilityConfig, PolicyConfig, Settings, UpstreamConfig
from penstock.engine.gguf_loader import read_gguf
from penstock.engine.locator import locate_chat_model
from penstock.engine.served import ChatCodec
from penstock.gateway.http_server import server_config
from penstock.observability.logging import configure_logging
from penstock.types import Prompt, RequestPriority, SamplingParams, TokenEvent

MODEL = "instant"
ADMIN_KEY = "sk-bench-gateway-0123456789"


class InstantModel(ChatCodec):
    """SmolLM2's prompt side, and a model that answers one token the moment it is asked."""

    def __init__(self) -> None:
        checkpoint = read_gguf(locate_chat_model(None), weights=False)
        super().__init__(checkpoint.chat_template, checkpoint.tokenizer, checkpoint.args.max_seq_len)
        self._token = checkpoint.tokenizer.encode("ok")[0]

    async def generate(
        self, prompt: Prompt, params: SamplingParams, priority: RequestPriority = "interactive"
    ) -> AsyncIterator[TokenEvent]:
        for index in range(params.n):
            yield TokenEvent("ok", (self._token,), "stop", index=index)

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--no-observability", action="store_true", help="No request metrics, logs, traces or review samples."
    )
    parser.add_argument("--upstream-url", default=None, help="Front this OpenAI-compatible server (its base URL).")
    args = parser.parse_args()
    configure_logging("info")  # the request log is part of the path being measured
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    settings = Settings(
        home=args.home,
        port=args.port,
        policy=PolicyConfig(shutdown_grace_s=5),
        admin_key=SecretStr(ADMIN_KEY),
        redis_url=args.redis_url,
        database_url=args.database_url,
        observability=_observability(not args.no_observability),
        deployments=[_deployment(args.upstream_url)] if args.upstream_url else [DeploymentConfig(name=MODEL)],
    )
    app = build_app(settings, {} if args.upstream_url else {MODEL: InstantModel()})
    uvicorn.Server(server_config(app, settings)).run()  # as `penstock serve` runs it


def _deployment(url: str) -> DeploymentConfig:
    """The instant model served elsewhere: a remote deployment on one replica, as a user would configure it."""
    return DeploymentConfig(name=MODEL, backend="openai", upstream=UpstreamConfig(urls=[url], model=MODEL))


def _observability(on: bool) -> ObservabilityConfig:
    """As `penstock serve` has it by default (traces are off there too), or all of it off."""
    if on:
        return ObservabilityConfig()
    return ObservabilityConfig(metrics=False, request_logs=False, review_sample_rate=0.0)


if __name__ == "__main__":
    main()
