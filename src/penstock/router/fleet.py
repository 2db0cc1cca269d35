"""Every deployment the router may send a request to: the engines in this process and the remote
servers' replicas, the one HTTP connection pool the remote ones share, and their health checks.

Remote deployments can change while serving (router/control.py applies the admin API's writes): the
`deployments` mapping is live, shared by the pipeline and the ladder, and a changed deployment is a new
object, so requests already under way finish on the one they started with.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from penstock.config import DeploymentConfig
from penstock.engine.served import ChatCodec, prompt_codec
from penstock.errors import ConfigError
from penstock.router.deployment_queue import DeploymentQueue
from penstock.router.deployments import Deployment, EngineDeployment, Model
from penstock.router.health import HealthChecker
from penstock.router.http_client import HttpClient
from penstock.router.remote import RemoteDeployment

# One pool for every upstream, its connections kept alive between requests (closed after this long idle).
KEEPALIVE_S = 30.0


class Fleet:
    def __init__(self, engines: Mapping[str, Model], client: HttpClient) -> None:
        self.deployments: dict[str, Deployment] = {
            n: EngineDeployment(n, m, queue_for(DeploymentConfig(name=n))) for n, m in engines.items()
        }
        self._client = client
        self._checker = HealthChecker(client)
        self._configs: dict[str, DeploymentConfig] = {}
        self._codecs: dict[Path, ChatCodec] = {}

    @property
    def engines(self) -> set[str]:
        """The deployments whose engine runs in this process."""
        return {n for n, d in self.deployments.items() if isinstance(d, EngineDeployment)}

    @property
    def remote(self) -> tuple[RemoteDeployment, ...]:
        return tuple(d for d in self.deployments.values() if isinstance(d, RemoteDeployment))

    def load(self, name: str) -> int:
        """A deployment's requests served or waiting (what a route's overflow marks compare with)."""
        deployment = self.deployments.get(name)
        return deployment.queue.load if deployment is not None else 0

    async def apply(self, configs: Iterable[DeploymentConfig]) -> None:
        """The remote deployments as `configs` have them: new ones made, changed ones remade, others dropped
        (engine deployments are loaded at start and stay; their queues follow their configuration). Raises
        ConfigError for an unset upstream key."""
        configs = list(configs)
        for config in configs:
            engine = self.deployments.get(config.name)
            queue = (config.queue, config.concurrency)
            if isinstance(engine, EngineDeployment) and (engine.queue.config, engine.queue.concurrency) != queue:
                engine.queue = queue_for(config)  # requests already in line finish in the old one
        wanted = {c.name: c for c in configs if c.backend == "openai"}
        changed = [c for name, c in wanted.items() if self._configs.get(name) != c]
        keys = {c.name: _api_key(c) for c in changed}
        codecs = await asyncio.to_thread(lambda: {c.name: prompt_codec(c, self._codecs) for c in changed})
        for name in [d.name for d in self.remote if d.name not in wanted]:
            self._checker.forget(name)
            del self.deployments[name]
        for config in changed:
            upstream = config.upstream
            assert upstream is not None  # backend openai has one (DeploymentConfig's validator)
            codec, key = codecs[config.name], keys[config.name]
            deployment = RemoteDeployment(config.name, upstream, codec, self._client, key, queue_for(config))
            self.deployments[config.name] = deployment
            self._checker.watch(deployment)
        self._configs = wanted

    @classmethod
    @asynccontextmanager
    async def open(cls, engines: Mapping[str, Model]) -> AsyncIterator[Fleet]:
        """`engines`: the models loaded in this process, by deployment name; `apply` adds the remote ones."""
        client = HttpClient(keepalive_s=KEEPALIVE_S)
        fleet = cls(engines, client)
        try:
            yield fleet
        finally:
            await fleet._checker.stop()
            client.close()


def queue_for(config: DeploymentConfig) -> DeploymentQueue:
    return DeploymentQueue(config.name, config.queue, config.concurrency)


def _api_key(config: DeploymentConfig) -> str | None:
    name = config.upstream.api_key_env if config.upstream else None
    if name is None:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"deployment {config.name}: the environment variable {name} (its upstream key) is not set")
    return key
