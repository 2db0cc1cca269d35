"""A background task that refreshes an in-memory view every few seconds and survives the source's outages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("penstock.store")


class Refresher:
    """Calls `refresh` every `interval_s` until stopped. A failure keeps the last view and is logged
    once per outage (as `<name>_stale`), and its end once (as `<name>_fresh`)."""

    def __init__(self, name: str, refresh: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self._name = name
        self._refresh = refresh
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Refresh once now (the source must answer), then keep refreshing in the background."""
        await self._refresh()
        self._task = asyncio.create_task(self._loop(), name=f"penstock-{self._name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)  # bounded: a stop must never hang a shutdown
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._refresh()
            except Exception as exc:  # keep serving from the last view
                if not self._failing:
                    log.warning(f"{self._name}_stale", error=str(exc) or type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info(f"{self._name}_fresh")
                self._failing = False
