"""Every key and tenant in memory, so no request waits on the database to learn who is calling.

The cache loads everything at start, then polls for rows whose change number is above the highest it
has seen (every `poll_s`, 0.25 s by default), so a revocation made through any replica or the CLI
reaches every replica well within a second. Change numbers come from a sequence and can commit out
of order, so a full reload every `full_reload_s` catches a row an incremental poll skipped. While
the database is unreachable the cache keeps answering from what it holds and says so in the logs.
"""

from __future__ import annotations

import time

from penstock.identity import ApiKey, Tenant, hash_key
from penstock.store.keys import KeyStore
from penstock.store.refresher import Refresher


class KeyCache:
    def __init__(self, store: KeyStore, *, poll_s: float = 0.25, full_reload_s: float = 30.0) -> None:
        self._store = store
        self._full_reload_s = full_reload_s
        self._keys: dict[str, ApiKey] = {}
        self._tenants: dict[str, Tenant] = {}
        self._last = 0
        self._loaded_at = 0.0
        self._refresher = Refresher("key_cache", self.refresh, poll_s)

    def lookup(self, secret: str) -> ApiKey | None:
        return self._keys.get(hash_key(secret))

    def tenant(self, tenant_id: str) -> Tenant:
        return self._tenants.get(tenant_id) or Tenant(id=tenant_id)

    async def refresh(self) -> None:
        """Apply what changed since the last refresh; everything, when a full reload is due."""
        full = time.monotonic() - self._loaded_at >= self._full_reload_s
        changes = await self._store.changes(0 if full else self._last)
        if full:
            self._keys, self._tenants = changes.keys, {t.id: t for t in changes.tenants}
            self._loaded_at = time.monotonic()
        else:
            self._keys.update(changes.keys)
            self._tenants.update({t.id: t for t in changes.tenants})
        self._last = changes.last

    async def start(self) -> None:
        """Load everything (the database must answer now), then keep polling in the background."""
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()
