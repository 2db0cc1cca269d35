"""Every deployment the router may send a request to: the engines in this process and the remote
servers' replicas, the one HTTP connection pool the remote ones share, and their health checks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import httpx

from penstock.config import DeploymentConfig
from penstock.engine.served import load_codecs
from penstock.errors import ConfigError
from penstock.router.deployments import Deployment, EngineDeployment, Model
from penstock.router.health import HealthChecker
from penstock.router.remote import RemoteDeployment

# One pool for every upstream: enough connections for a busy gateway, kept alive between requests.
POOL = httpx.Limits(max_connections=4096, max_keepalive_connections=512, keepalive_expiry=30)


class Fleet:
    def __init__(self, deployments: Mapping[str, Deployment], remote: Iterable[RemoteDeployment]) -> None:
        self.deployments = dict(deployments)
        self.remote = tuple(remote)

    def load(self, name: str) -> int:
        """A deployment's requests in flight (what a route's overflow marks compare with)."""
        return self.deployments[name].in_flight()

    @classmethod
    @asynccontextmanager
    async def open(cls, configs: Iterable[DeploymentConfig], engines: Mapping[str, Model]) -> AsyncIterator[Fleet]:
        """`engines`: the models loaded in this process, by deployment name; `configs` add the remote ones."""
        remote_configs = [c for c in configs if c.backend == "openai"]
        keys = {c.name: _api_key(c) for c in remote_configs}
        codecs = load_codecs(remote_configs)
        async with httpx.AsyncClient(limits=POOL) as client:
            remote = [
                RemoteDeployment(c.name, c.upstream, codecs[c.name], client, keys[c.name])  # type: ignore[arg-type]
                for c in remote_configs
            ]
            deployments: dict[str, Deployment] = {n: EngineDeployment(n, m) for n, m in engines.items()}
            deployments |= {d.name: d for d in remote}
            checker = HealthChecker(remote, client)
            checker.start()
            try:
                yield cls(deployments, remote)
            finally:
                await checker.stop()


def _api_key(config: DeploymentConfig) -> str | None:
    name = config.upstream.api_key_env if config.upstream else None
    if name is None:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"deployment {config.name}: the environment variable {name} (its upstream key) is not set")
    return key
