"""Fixtures for the store tests only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import scratch_database


@pytest.fixture
async def blank_database_url(postgres_server: str) -> AsyncIterator[str]:
    """URL of a fresh database with no migrations applied, dropped afterwards."""
    async with scratch_database(postgres_server) as url:
        yield url
