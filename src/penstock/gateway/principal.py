"""Who a retrieval runs for: the caller's tenant, and the end user and groups it may act as.

A key whose scopes name a user or groups is pinned: it reads as exactly that user and those groups
(a request may narrow the groups, never widen them, and may name no other user). Pinning either pins
both, so a key pinned to a user cannot also claim groups, nor one pinned to groups claim a user. A key
without either is a trusted backend's: it asserts the end user and groups per request, as the
application that authenticated that user knows them.
"""

from __future__ import annotations

from collections.abc import Sequence

from penstock.errors import PermissionDenied
from penstock.types import Caller, Principal


def principal_of(who: Caller, user: str | None, groups: Sequence[str] | None) -> Principal:
    scopes = who.scopes
    if scopes.user is None and scopes.groups is None:
        return Principal(who.tenant, user, tuple(sorted(set(groups or ()))))
    if user is not None and user != scopes.user:
        raise PermissionDenied("this API key may not act for another user", param="user")
    pinned = scopes.groups or ()
    wider = sorted(set(groups or ()) - set(pinned))
    if wider:
        raise PermissionDenied(f"this API key may not act for the groups {wider}", param="groups")
    return Principal(who.tenant, scopes.user, tuple(sorted(set(pinned if groups is None else groups))))
