"""The control plane in each gateway replica: the config file's deployments and routes, overlaid with
those written through the admin API (kept in PostgreSQL), applied to the fleet and the router.

Every replica polls the store every `poll_s` (0.25 s) for rows above the highest change it has seen, so
a change made through any replica reaches all of them within a second; a full reload every
`full_reload_s` catches a change number that committed out of order. Writes are checked first against
the configuration they would make (a route naming a missing deployment is refused), and the writer's own
replica applies them before it answers. Engine deployments load their weights at start: they come from
the config file only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import structlog

from penstock.config import DeploymentConfig, RouteConfig, check_routes
from penstock.errors import Conflict, InvalidRequest, NotFound
from penstock.router.fleet import Fleet
from penstock.router.router import Router
from penstock.store.refresher import Refresher
from penstock.store.router_objects import Kind, RouterObjectStore

log = structlog.get_logger("penstock.router")

Overlay = dict[tuple[Kind, str], dict | None]


class RouterControl:
    def __init__(
        self,
        deployments: Iterable[DeploymentConfig],
        routes: Iterable[RouteConfig],
        fleet: Fleet,
        router: Router,
        store: RouterObjectStore | None = None,
        *,
        poll_s: float = 0.25,
        full_reload_s: float = 30.0,
    ) -> None:
        engines = fleet.engines  # those loaded in this process, by whatever configuration named them
        self._base = [d for d in deployments if d.backend == "openai" or d.name in engines]
        self._base += [DeploymentConfig(name=n) for n in engines if n not in {d.name for d in self._base}]
        self._base_routes = list(routes)
        self._fleet, self._router, self._store = fleet, router, store
        self._overlay: Overlay = {}
        self._last, self._loaded_at, self._full_reload_s = 0, 0.0, full_reload_s
        self._refresher = Refresher("router_config", self.refresh, poll_s)
        self._refreshing = asyncio.Lock()
        # What each deployment is now, by name: the ledger's costs read it (live, replaced in place).
        self.configs: dict[str, DeploymentConfig] = {}

    @property
    def router(self) -> Router:
        return self._router

    async def start(self) -> None:
        if self._store is None:
            await self._apply(self._overlay)
        else:
            await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def refresh(self) -> None:
        async with self._refreshing:  # the poller and a write's own refresh, one at a time
            await self._refresh()

    async def _refresh(self) -> None:
        assert self._store is not None
        full = time.monotonic() - self._loaded_at >= self._full_reload_s
        rows, last = await self._store.changes(0 if full else self._last)
        overlay: Overlay = {} if full else dict(self._overlay)
        overlay |= {(row.kind, row.name): row.body for row in rows}
        if full:
            self._loaded_at = time.monotonic()
        if overlay != self._overlay or not self.configs:
            await self._apply(overlay)
        self._last = last

    def effective(self, overlay: Overlay | None = None) -> tuple[list[DeploymentConfig], list[RouteConfig]]:
        """The config file's deployments and routes with the admin API's written over them, by name."""
        overlay = self._overlay if overlay is None else overlay
        deployments = {d.name: d for d in self._base}
        routes = {r.name: r for r in self._base_routes}
        for (kind, name), body in overlay.items():
            target = deployments if kind == "deployment" else routes
            target.pop(name, None)
            if body is not None:
                target[name] = DeploymentConfig(**body) if kind == "deployment" else RouteConfig(**body)
        return list(deployments.values()), list(routes.values())

    async def _apply(self, overlay: Overlay) -> None:
        try:
            deployments, routes = self.effective(overlay)
            check_routes(deployments, routes)
            await self._fleet.apply(deployments)
        except (ValueError, InvalidRequest) as exc:  # rows no write would have let in: keep what serves
            log.error("router_config_refused", error=str(exc))
            return
        self._router.update(self._fleet.deployments, routes)
        self.configs.clear()
        self.configs.update({d.name: d for d in deployments})
        self._overlay = overlay

    async def put(self, kind: Kind, name: str, body: dict | None) -> None:
        """Write one deployment or route (None deletes it) once the configuration it makes is valid."""
        if self._store is None:
            raise InvalidRequest("this process keeps no configuration of its own (an engine worker)")
        overlay = {**self._overlay, (kind, name): body}
        if body is None and kind == "deployment":
            users = [r.name for r in self.effective()[1] if name in r.deployments]
            if users:
                raise Conflict(f"deployment {name!r} is used by the routes {users}: change them first", param="name")
        deployments, routes = self._checked(kind, name, body, overlay)
        try:
            check_routes(deployments, routes)
        except ValueError as exc:
            error = Conflict if body is None else InvalidRequest
            raise error(str(exc), param="name") from None
        await self._store.put(kind, name, body)
        await self.refresh()

    def _checked(
        self, kind: Kind, name: str, body: dict | None, overlay: Overlay
    ) -> tuple[list[DeploymentConfig], list[RouteConfig]]:
        current_deployments, current_routes = self.effective()
        names = {d.name for d in current_deployments} if kind == "deployment" else {r.name for r in current_routes}
        if body is None and name not in names:
            raise NotFound(f"there is no {kind} named {name!r}", param="name")
        if kind == "deployment":
            existing = next((d for d in current_deployments if d.name == name), None)
            to_engine = body is not None and body.get("backend", "engine") == "engine"
            if to_engine or (existing is not None and existing.backend == "engine"):
                raise InvalidRequest(
                    "engine deployments load their weights at start: change them in the config file", param="backend"
                )
        try:
            return self.effective(overlay)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise InvalidRequest(str(exc), param=kind) from None
