"""What the calling key may ask for: its models, tools, collections and max_tokens cap. Checked before any work."""

from __future__ import annotations

from collections.abc import Sequence

from penstock.config import PolicyConfig
from penstock.errors import InvalidRequest, PermissionDenied
from penstock.identity import KeyScopes
from penstock.types import Caller


def check_scopes(caller: Caller, model: str, tools: Sequence[str]) -> None:
    scopes = caller.scopes
    if scopes.models is not None and model not in scopes.models:
        raise PermissionDenied(f"this API key may not use the model '{model}'", param="model", code="model_not_allowed")
    denied = sorted(set(tools) - set(scopes.tools)) if scopes.tools is not None else []
    if denied:
        raise PermissionDenied(f"this API key may not use the tools {denied}", param="tools", code="tool_not_allowed")


def check_output(caller: Caller, max_tokens: int | None, n: int, policy: PolicyConfig) -> None:
    """max_tokens within the key's cap (the service's `policy.max_tokens_cap` for a key that sets none),
    and n choices of it within `policy.max_request_completion_tokens`: no key is unlimited."""
    cap = caller.scopes.max_tokens or policy.max_tokens_cap
    if max_tokens is not None and max_tokens > cap:
        raise InvalidRequest(f"max_tokens is {max_tokens}; this API key allows at most {cap}", param="max_tokens")
    total, bound = n * (max_tokens or min(policy.default_max_tokens, cap)), policy.max_request_completion_tokens
    if total > bound:
        asked = f"n x max_tokens is {n} x {max_tokens}" if n > 1 else f"max_tokens is {max_tokens}"
        raise InvalidRequest(f"{asked}; a request may ask for at most {bound}", param="n" if n > 1 else "max_tokens")


def check_collections(caller: Caller, collections: Sequence[str]) -> None:
    allowed = caller.scopes.collections
    denied = sorted(set(collections) - set(allowed)) if allowed is not None else []
    if denied:
        raise PermissionDenied(
            f"this API key may not use the collections {denied}", param="collections", code="collection_not_allowed"
        )


def tenant_in_reach(caller: Caller, asked: str | None) -> str | None:
    """The tenant a call acts on: a platform admin's any it names (None: every tenant), anyone else's its own."""
    if caller.is_platform:
        return asked
    if asked is not None and asked != caller.tenant:
        raise PermissionDenied("this API key acts within its own tenant only", param="tenant")
    return caller.tenant


def check_delegation(caller: Caller, granted: KeyScopes) -> None:
    """A tenant's admin key makes keys no wider than itself: what it may not use, read as or spend, the
    keys it makes may not either (else a key limited to one model could make itself an unlimited one)."""
    if caller.is_platform:
        return
    own = caller.scopes
    for name in ("models", "tools", "collections"):
        mine, theirs = getattr(own, name), getattr(granted, name)
        if mine is not None and (theirs is None or not set(theirs) <= set(mine)):
            raise PermissionDenied(f"a key made by this one may use only its {name}: {list(mine)}", param=name)
    if (own.user is not None or own.groups is not None) and (
        granted.user != own.user or granted.groups is None or not set(granted.groups) <= set(own.groups or ())
    ):
        raise PermissionDenied("a key made by this one reads documents as its user and groups at most", param="user")
    bounds = [("max_tokens", own.max_tokens, granted.max_tokens)]
    bounds += [
        (name, getattr(own.limits, name), getattr(granted.limits, name)) for name in ("rpm", "tpm", "max_concurrent")
    ]
    for name, mine, theirs in bounds:
        if mine is not None and (theirs is None or theirs > mine):
            raise PermissionDenied(f"a key made by this one has {name} of at most {mine}", param=name)


def allowed_models(caller: Caller, models: Sequence[str]) -> list[str]:
    allowed = caller.scopes.models
    return [m for m in models if allowed is None or m in allowed]
