"""The admin API under /admin/: tenants and API keys. Admin keys and the master key only.

A tenant's admin key acts within its own tenant: its keys, its review sample. Tenants themselves,
and anything across tenants, need a platform admin: the master key, or a key with the platform scope.

Unlike the request path, these calls go to the database: they are rare, and must be durable before
they answer. A created key's plaintext appears in the creation answer and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from penstock.errors import DependencyUnavailable, PermissionDenied
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.services import Services, services
from penstock.identity import ApiKey, KeyScopes, RateLimits, Tenant
from penstock.router.scopes import check_delegation, tenant_in_reach
from penstock.types import Caller

ADMIN_ERRORS = {**ERRORS, 409: ERRORS[400]}
T = TypeVar("T")


async def admin(who: Caller = Depends(caller)) -> Caller:
    if not who.is_admin:
        raise PermissionDenied("the admin API needs an admin key or the master key (PENSTOCK_ADMIN_KEY)")
    return who


async def platform(who: Caller = Depends(admin)) -> Caller:
    if not who.is_platform:
        raise PermissionDenied("tenants, and anything across tenants, need the master key or a platform admin key")
    return who


router = APIRouter(prefix="/admin", dependencies=[Depends(admin)], responses=ADMIN_ERRORS, route_class=StrictJsonRoute)


class KeyRequest(BaseModel):
    """A new key: its tenant, what it may use (omitted: everything) and its own limits."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1)
    name: str = ""
    models: list[str] | None = None
    tools: list[str] | None = None
    collections: list[str] | None = None
    user: str | None = None  # the end user this key reads documents as (omitted: asserted per request)
    groups: list[str] | None = None  # the groups it reads documents as (omitted: asserted per request)
    max_tokens: int | None = Field(default=None, gt=0)
    admin: bool = False
    platform: bool = False  # an admin of every tenant; only a platform admin may make one
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, gt=0)
    expires_at: datetime | None = None

    def scopes(self) -> KeyScopes:
        return KeyScopes(
            models=_tuple(self.models),
            tools=_tuple(self.tools),
            collections=_tuple(self.collections),
            user=self.user,
            groups=_tuple(self.groups),
            max_tokens=self.max_tokens,
            admin=self.admin,
            platform=self.platform,
            limits=RateLimits(rpm=self.rpm, tpm=self.tpm, max_concurrent=self.max_concurrent),
        )


class CreatedKey(ApiKey):
    key: str  # the plaintext: shown once, here


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Tenant]


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKey]


class Admin:
    """The key store, and this replica's key cache to refresh after a write, so that the writer's own
    replica acts on it at once (the others poll)."""

    def __init__(self, svc: Services = Depends(services)) -> None:
        if svc.keys is None or svc.key_cache is None:
            raise DependencyUnavailable("this process keeps no tenants or keys (an engine worker has no database)")
        self.store = svc.keys
        self._cache = svc.key_cache

    async def refreshed(self, result: T) -> T:
        await self._cache.refresh()
        return result


@router.post("/tenants", status_code=201, response_model=Tenant, dependencies=[Depends(platform)])
async def create_tenant(body: Tenant, admin: Admin = Depends()) -> Tenant:
    return await admin.refreshed(await admin.store.create_tenant(body))


@router.get("/tenants", response_model=TenantList)
async def list_tenants(who: Caller = Depends(caller), admin: Admin = Depends()) -> TenantList:
    """Every tenant for a platform admin; a tenant's admin sees its own."""
    reach = tenant_in_reach(who, None)
    return TenantList(data=[t for t in await admin.store.list_tenants() if reach in (None, t.id)])


@router.post("/keys", status_code=201, response_model=CreatedKey)
async def create_key(body: KeyRequest, who: Caller = Depends(caller), admin: Admin = Depends()) -> CreatedKey:
    tenant = tenant_in_reach(who, body.tenant) or body.tenant
    if body.platform and not who.is_platform:
        raise PermissionDenied("only a platform admin may make a platform admin key", param="platform")
    scopes = body.scopes()
    check_delegation(who, scopes)
    created = await admin.store.create_key(tenant, scopes, name=body.name, expires_at=body.expires_at)
    return await admin.refreshed(CreatedKey(**created.key.model_dump(), key=created.secret))


@router.get("/keys", response_model=KeyList)
async def list_keys(tenant: str | None = None, who: Caller = Depends(caller), admin: Admin = Depends()) -> KeyList:
    return KeyList(data=await admin.store.list_keys(tenant_in_reach(who, tenant)))


@router.delete("/keys/{key_id}", response_model=ApiKey)
async def revoke_key(key_id: str, who: Caller = Depends(caller), admin: Admin = Depends()) -> ApiKey:
    """Another tenant's key is as unknown to a tenant's admin as a missing one."""
    return await admin.refreshed(await admin.store.revoke_key(key_id, tenant_in_reach(who, None)))


class ReviewOut(BaseModel):
    request_id: str
    tenant: str
    deployment: str | None
    route: str
    prompt: list[dict[str, str]]
    completion: str
    created_at: datetime | None


class ReviewList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ReviewOut]


@router.get("/review", response_model=ReviewList)
async def review_sample(
    limit: int = Query(default=20, ge=1, le=500),
    tenant: str | None = None,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> ReviewList:
    """A random draw from the review sample (prompts and completions, redacted when they were stored):
    all tenants' for a platform admin, its own tenant's for a tenant's admin."""
    if svc.reviews is None:
        raise DependencyUnavailable("this process keeps no review sample (an engine worker has no database)")
    samples = await svc.reviews.sample(limit, tenant_in_reach(who, tenant))
    return ReviewList(data=[ReviewOut(**{**asdict(s), "tenant": s.tenant}) for s in samples])


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)
