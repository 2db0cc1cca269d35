"""Who a retrieval runs for: the caller's tenant, and the end user and groups it may act as.

A key whose scopes name a user or groups reads as exactly those (a request may narrow the groups,
never widen them). A key without them is a trusted backend's: it asserts the end user and groups
per request, as the application that authenticated that user knows them.
"""

from __future__ import annotations

from collections.abc import Sequence

from penstock.errors import PermissionDenied
from penstock.types import Caller, Principal


def principal_of(who: Caller, user: str | None, groups: Sequence[str] | None) -> Principal:
    scopes = who.scopes
    if scopes.user is not None:
        if user is not None and user != scopes.user:
            raise PermissionDenied("this API key acts for one user only", param="user")
        user = scopes.user
    if scopes.groups is not None:
        wider = sorted(set(groups or ()) - set(scopes.groups))
        if wider:
            raise PermissionDenied(f"this API key may not act for the groups {wider}", param="groups")
        groups = scopes.groups if groups is None else groups
    return Principal(who.tenant, user, tuple(sorted(set(groups or ()))))
