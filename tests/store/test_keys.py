"""Tenants and keys in PostgreSQL: keys stored only as hashes, revocation, and the change feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from penstock.errors import Conflict, NotFound
from penstock.identity import KEY_PREFIX, KeyScopes, RateLimits, Tenant, TenantLimits, hash_key
from penstock.store.database import Database
from penstock.store.keys import KeyStore


@pytest.fixture
async def store(database: Database) -> KeyStore:
    store = KeyStore(database)
    await store.create_tenant(Tenant(id="acme", name="Acme", limits=TenantLimits(rpm=60, daily_tokens=1000)))
    return store


async def test_a_tenant_round_trips_with_its_limits(store: KeyStore) -> None:
    [tenant] = await store.list_tenants()
    assert (tenant.id, tenant.name, tenant.limits) == ("acme", "Acme", TenantLimits(rpm=60, daily_tokens=1000))
    assert tenant.created_at is not None


async def test_a_duplicate_tenant_is_a_conflict(store: KeyStore) -> None:
    with pytest.raises(Conflict):
        await store.create_tenant(Tenant(id="acme"))


async def test_a_key_is_stored_as_a_hash_and_never_in_plaintext(store: KeyStore, database: Database) -> None:
    scopes = KeyScopes(models=("m",), max_tokens=64, limits=RateLimits(rpm=5))
    created = await store.create_key("acme", scopes, name="ci")
    assert created.secret.startswith(KEY_PREFIX) and len(created.secret) > 40
    assert created.key.prefix == created.secret[:7]
    async with database.connection() as conn:
        rows = await (await conn.execute("SELECT * FROM api_keys")).fetchall()
    dumped = repr(rows)
    assert created.secret not in dumped and created.secret[7:] not in dumped
    assert hash_key(created.secret) in dumped
    [listed] = await store.list_keys("acme")
    assert listed == created.key and listed.scopes == scopes


async def test_a_key_for_an_unknown_tenant_is_not_found(store: KeyStore) -> None:
    with pytest.raises(NotFound):
        await store.create_key("nobody", KeyScopes())


async def test_revoking_is_idempotent_and_unknown_keys_are_not_found(store: KeyStore) -> None:
    created = await store.create_key("acme", KeyScopes())
    first = await store.revoke_key(created.key.id)
    assert first.revoked_at is not None and first.refusal() == "this API key was revoked"
    assert (await store.revoke_key(created.key.id)).revoked_at == first.revoked_at
    with pytest.raises(NotFound):
        await store.revoke_key("key_missing")


async def test_the_change_feed_returns_only_what_changed(store: KeyStore) -> None:
    everything = await store.changes(0)
    assert list(everything.keys) == [] and [t.id for t in everything.tenants] == ["acme"]
    created = await store.create_key("acme", KeyScopes())
    added = await store.changes(everything.last)
    assert list(added.keys) == [hash_key(created.secret)] and added.tenants == []
    assert (await store.changes(added.last)).keys == {}
    await store.revoke_key(created.key.id)
    revoked = await store.changes(added.last)
    assert revoked.keys[hash_key(created.secret)].revoked_at is not None


async def test_ensure_tenant_updates_limits_and_reports_the_change(store: KeyStore) -> None:
    last = (await store.changes(0)).last
    await store.ensure_tenant(Tenant(id="acme", name="Acme", limits=TenantLimits(rpm=60, daily_tokens=1000)))
    assert (await store.changes(last)).tenants == []  # unchanged: no change number spent
    await store.ensure_tenant(Tenant(id="acme", name="Acme", limits=TenantLimits(rpm=10)))
    [tenant] = (await store.changes(last)).tenants
    assert tenant.limits == TenantLimits(rpm=10)


def test_an_expired_key_is_refused() -> None:
    from penstock.identity import ApiKey

    now = datetime.now(UTC)
    key = ApiKey(id="k", tenant="t", name="", prefix="pk-x", scopes=KeyScopes(), created_at=now)
    assert key.refusal() is None
    assert key.model_copy(update={"expires_at": now - timedelta(seconds=1)}).refusal() == "this API key has expired"
