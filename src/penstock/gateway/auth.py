"""Who is calling: the master key for now; tenants and API keys come with the key store."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from penstock.errors import AuthenticationFailed
from penstock.types import Caller

ADMIN = Caller(key_id="admin", tenant="default", is_admin=True)
# Without a master key the service is open, as vLLM is without --api-key; `penstock serve`
# refuses to listen beyond loopback in that state.
ANONYMOUS = Caller(key_id="anonymous", tenant="default")


class Authenticator:
    def __init__(self, admin_key: SecretStr | None) -> None:
        self._admin_key = admin_key.get_secret_value().encode() if admin_key else None

    @property
    def open(self) -> bool:
        return self._admin_key is None

    def authenticate(self, authorization: str | None) -> Caller:
        if self._admin_key is None:
            return ANONYMOUS
        token = _bearer_token(authorization)
        if token is None:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(token.encode(), self._admin_key):
            raise AuthenticationFailed("invalid API key")
        return ADMIN


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
