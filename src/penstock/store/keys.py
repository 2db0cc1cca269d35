"""Tenants and API keys in PostgreSQL: the admin API and CLI write here; replicas poll for changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from penstock.errors import Conflict, NotFound
from penstock.identity import (
    SHOWN_PREFIX,
    ApiKey,
    KeyScopes,
    Tenant,
    TenantLimits,
    hash_key,
    new_key_id,
    new_secret,
)
from penstock.store.database import Database
from penstock.store.storable import storable_json

_KEY_COLUMNS = "id, tenant_id, name, prefix, scopes, created_at, expires_at, revoked_at"
_TENANT_COLUMNS = "id, name, limits, created_at"


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    secret: str  # the only time the plaintext exists outside the client


@dataclass(frozen=True, slots=True)
class Changes:
    """Rows written since a poll's `after`: keys by their hash, and the counter to poll from next."""

    keys: dict[str, ApiKey]
    tenants: list[Tenant]
    last: int


class KeyStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def create_tenant(self, tenant: Tenant) -> Tenant:
        try:
            async with self._db.connection() as conn:
                row = await (
                    await conn.execute(
                        f"INSERT INTO tenants (id, name, limits) VALUES (%s, %s, %s) RETURNING {_TENANT_COLUMNS}",
                        (tenant.id, tenant.name, _limits_json(tenant)),
                    )
                ).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(f"tenant {tenant.id!r} already exists", param="id") from exc
        return _tenant(row)

    async def ensure_tenant(self, tenant: Tenant) -> None:
        """Create the tenant, or set its name and limits: for tenants declared in the config file."""
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, name, limits) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
                " SET name = EXCLUDED.name, limits = EXCLUDED.limits, change = nextval('key_changes')"
                " WHERE (tenants.name, tenants.limits) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.limits)",
                (tenant.id, tenant.name, _limits_json(tenant)),
            )

    async def list_tenants(self) -> list[Tenant]:
        async with self._db.connection() as conn:
            rows = await (await conn.execute(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY id")).fetchall()
        return [_tenant(row) for row in rows]

    async def create_key(
        self, tenant: str, scopes: KeyScopes, *, name: str = "", expires_at: datetime | None = None
    ) -> NewKey:
        secret = new_secret()
        values = (new_key_id(), tenant, name, hash_key(secret), secret[:SHOWN_PREFIX], _scopes_json(scopes), expires_at)
        try:
            async with self._db.connection() as conn:
                row = await (
                    await conn.execute(
                        "INSERT INTO api_keys (id, tenant_id, name, key_hash, prefix, scopes, expires_at)"
                        f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
                        values,
                    )
                ).fetchone()
        except psycopg.errors.ForeignKeyViolation as exc:
            raise NotFound(f"no tenant {tenant!r}", param="tenant") from exc
        return NewKey(_key(row), secret)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE %(tenant)s::text IS NULL OR tenant_id = %(tenant)s"
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query + " ORDER BY created_at, id", {"tenant": tenant})).fetchall()
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """Revoke now (idempotent: a revoked key keeps its first revocation time); only `tenant`'s, if given."""
        async with self._db.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), change = nextval('key_changes')"
                    f" WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
                    f" RETURNING {_KEY_COLUMNS}",
                    {"id": key_id, "tenant": tenant},
                )
            ).fetchone()
        if row is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return _key(row)

    async def changes(self, after: int) -> Changes:
        """Keys and tenants written since change number `after` (0: all of them)."""
        async with self._db.connection() as conn:
            keys = await (
                await conn.execute(f"SELECT key_hash, change, {_KEY_COLUMNS} FROM api_keys WHERE change > %s", (after,))
            ).fetchall()
            tenants = await (
                await conn.execute(f"SELECT change, {_TENANT_COLUMNS} FROM tenants WHERE change > %s", (after,))
            ).fetchall()
        last = max([after, *(row[1] for row in keys), *(row[0] for row in tenants)])
        return Changes({row[0]: _key(row[2:]) for row in keys}, [_tenant(row[1:]) for row in tenants], last)


def _limits_json(tenant: Tenant) -> Jsonb:
    return Jsonb(tenant.limits.model_dump(exclude_none=True), dumps=storable_json)


def _scopes_json(scopes: KeyScopes) -> Jsonb:
    return Jsonb(scopes.model_dump(mode="json", exclude_defaults=True), dumps=storable_json)


def _key(row: Sequence[Any] | None) -> ApiKey:
    assert row is not None  # RETURNING and SELECT rows
    id_, tenant, name, prefix, scopes, created_at, expires_at, revoked_at = row
    return ApiKey(
        id=id_,
        tenant=tenant,
        name=name,
        prefix=prefix,
        scopes=KeyScopes.model_validate(scopes),
        created_at=created_at,
        expires_at=expires_at,
        revoked_at=revoked_at,
    )


def _tenant(row: Sequence[Any] | None) -> Tenant:
    assert row is not None
    id_, name, limits, created_at = row
    return Tenant(id=id_, name=name, limits=TenantLimits.model_validate(limits), created_at=created_at)
