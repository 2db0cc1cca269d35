"""Tenants and API keys: what a key may do, what a tenant may spend, and how a key is made and checked.

A key is `pk-` and 43 random URL-safe characters (256 bits). Only its SHA-256 is stored: with that
much entropy a fast hash is enough, and it lets every replica find a key in a dict without the
database. The plaintext exists once, in the answer to the call that created it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "pk-"
SHOWN_PREFIX = 7  # "pk-" and four characters: enough to tell keys apart in a list, useless to an attacker


class RateLimits(BaseModel):
    """Per-minute request and token limits and a cap on requests in flight; None is no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, gt=0)


class TenantLimits(RateLimits):
    """A tenant's rate limits (shared by all its keys) and its token and cost budgets."""

    daily_tokens: int | None = Field(default=None, gt=0)
    monthly_tokens: int | None = Field(default=None, gt=0)
    daily_cost: float | None = Field(default=None, gt=0)
    monthly_cost: float | None = Field(default=None, gt=0)
    # The highest tier its requests run at: batch puts all of them behind interactive work, and among the
    # first shed under overload (router/deployment_queue.py), whatever a request asks for.
    max_priority: Literal["interactive", "batch"] = "interactive"


class KeyScopes(BaseModel):
    """What a key may do. None allows everything of that kind; an empty list allows nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    collections: tuple[str, ...] | None = None
    # Whose documents retrieval reads: a key naming a user or groups reads as exactly those; a key
    # without them (a trusted backend's) asserts the end user and groups per request.
    user: str | None = None
    groups: tuple[str, ...] | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    admin: bool = False  # the admin API, within the key's own tenant
    platform: bool = False  # an admin of every tenant, as the master key is: tenants, and anything across them
    limits: RateLimits = RateLimits()


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = ""
    limits: TenantLimits = TenantLimits()
    created_at: datetime | None = None


class ApiKey(BaseModel):
    """A key as listed: everything but the secret."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    name: str
    prefix: str
    scopes: KeyScopes
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def refusal(self, now: datetime | None = None) -> str | None:
        """Why this key may not be used now, or None when it may."""
        if self.revoked_at is not None:
            return "this API key was revoked"
        if self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC)):
            return "this API key has expired"
        return None


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
