"""Active health checks: each remote replica's base URL + the check's path, every `interval_s`. A
failed check opens the replica's breaker at once (a dead replica is out of rotation within one
interval, before any request finds it), a passing one lets that breaker probe again."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import structlog

from penstock.router.http_client import ConnectError, Disconnected, HttpClient
from penstock.router.remote import RemoteDeployment
from penstock.router.replicas import Replica

log = structlog.get_logger("penstock.router")


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
                    await response.read(deadline=deadline)  # whole, so its connection is kept for the next
                finally:
                    response.release()
            ok = response.status < 500 and response.status not in (401, 403, 404)
        except (ConnectError, Disconnected, TimeoutError):
            ok = False
        if ok:
            replica.breaker.healthy()
        elif replica.healthy:
            log.warning("replica_unhealthy", deployment=deployment.name, replica=replica.url)
        if not ok:
            replica.breaker.trip(by_health=True)
        replica.healthy = ok
        return ok
