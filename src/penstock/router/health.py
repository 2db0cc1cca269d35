"""Active health checks: each remote replica's base URL + the check's path, every `interval_s`. A
failed check opens the replica's breaker at once (a dead replica is out of rotation within one
interval, before any request finds it), a passing one lets that breaker probe again."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import orjson
import structlog

from penstock.router.http_client import ConnectError, Disconnected, HttpClient
from penstock.router.remote import RemoteDeployment
from penstock.router.replicas import Replica

log = structlog.get_logger("penstock.router")
MAX_BODY = 1 << 20  # a model list longer than this is read no further (a hosted API's may be long)


class HealthChecker:
    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, deployment: RemoteDeployment) -> None:
        """Check its replicas from now on (instead of the checks of any deployment of that name before)."""
        self.forget(deployment.name)
        self._tasks[deployment.name] = asyncio.create_task(self._watch(deployment))

    def forget(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    async def _watch(self, deployment: RemoteDeployment) -> None:
        interval = deployment.config.health.interval_s
        while True:
            await asyncio.gather(*(self.check(deployment, r) for r in deployment.replicas.replicas))
            await asyncio.sleep(interval)

    async def check(self, deployment: RemoteDeployment, replica: Replica) -> bool:
        health = deployment.config.health
        url = f"{replica.url}/{health.path.lstrip('/')}"
        deadline = asyncio.get_running_loop().time() + health.timeout_s
        try:
            async with asyncio.timeout(health.timeout_s):  # the connect too
                response = await self._client.request("GET", url, headers=deployment.headers, deadline=deadline)
                try:
                    body = await response.read(MAX_BODY, deadline)  # whole, so its connection is kept for the next
                finally:
                    response.release()
            problem = _problem(response.status, body, deployment.upstream_model, health.path)
        except (ConnectError, Disconnected, TimeoutError) as exc:
            problem = str(exc) or type(exc).__name__
        ok = problem is None
        if ok:
            replica.breaker.healthy()
        elif replica.healthy:
            log.warning("replica_unhealthy", deployment=deployment.name, replica=replica.url, problem=problem)
        if not ok:
            replica.breaker.trip(by_health=True)
        replica.healthy = ok
        return ok


def _problem(status: int, body: bytes, model: str, path: str) -> str | None:
    """What is wrong with a replica by its check's answer; None if nothing. A model list (the default check,
    GET /v1/models) must name the deployment's upstream model: a replica serving another would answer every
    request with a 404 (a deployment whose `upstream.model` was left unset names itself)."""
    if status >= 500 or status in (401, 403, 404):
        return f"its health check answered HTTP {status}"
    if path.strip("/") != "models" or status != 200:
        return None
    try:
        served = {str(m["id"]) for m in orjson.loads(body)["data"]}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # not an OpenAI model list: the status is all there is to go by
    if model in served:
        return None
    return f"it does not serve the model {model!r} (it serves {', '.join(sorted(served)[:5])}); set upstream.model"
