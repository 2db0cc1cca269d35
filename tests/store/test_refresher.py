"""The background refresher keeps going through its source's failures."""

from __future__ import annotations

import asyncio

import pytest

from penstock.store.refresher import Refresher


async def test_it_refreshes_on_its_interval_through_failures_until_stopped() -> None:
    calls: list[int] = []

    async def refresh() -> None:
        calls.append(len(calls))
        if len(calls) in (2, 3):
            raise ConnectionError("source down")

    refresher = Refresher("test", refresh, interval_s=0.01)
    await refresher.start()
    await asyncio.sleep(0.2)
    await refresher.stop()
    stopped_at = len(calls)
    await asyncio.sleep(0.05)
    assert stopped_at > 4 and len(calls) == stopped_at  # past the failures, and nothing after stop


async def test_the_first_refresh_must_succeed() -> None:
    async def refresh() -> None:
        raise ConnectionError("source down")

    with pytest.raises(ConnectionError):
        await Refresher("test", refresh, interval_s=1).start()
