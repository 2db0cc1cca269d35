"""Who is calling: the master key (PENSTOCK_ADMIN_KEY), or a tenant's API key from the key cache."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from penstock.errors import AuthenticationFailed, PermissionDenied
from penstock.gateway.key_cache import KeyCache
from penstock.identity import KEY_PREFIX, ApiKey
from penstock.types import Caller

ADMIN = Caller(key_id="admin", tenant="default", is_admin=True, is_platform=True)
# Without a master key the service is open, as vLLM is without --api-key; `penstock serve`
# refuses to listen beyond loopback in that state. A valid tenant key still counts as its tenant.
ANONYMOUS = Caller(key_id="anonymous", tenant="default")


class Authenticator:
    def __init__(
        self, admin_key: SecretStr | None, keys: KeyCache | None = None, metrics_token: SecretStr | None = None
    ) -> None:
        self._admin_key = admin_key.get_secret_value().encode() if admin_key else None
        self._keys = keys
        self._metrics_token = metrics_token.get_secret_value().encode() if metrics_token else None

    @property
    def open(self) -> bool:
        return self._admin_key is None

    def authenticate(self, authorization: str | None) -> Caller:
        token = _bearer_token(authorization)
        if token is not None and self._admin_key is not None and hmac.compare_digest(token.encode(), self._admin_key):
            return ADMIN
        key = self._lookup(token)
        refusal = "invalid API key" if key is None else key.refusal()
        if key is not None and refusal is None:
            return self._caller(key)
        if self.open:
            return ANONYMOUS
        if token is None:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        raise AuthenticationFailed(refusal or "invalid API key")

    def authorize_scrape(self, authorization: str | None) -> None:
        """/metrics labels series by tenant: the scrape token, the master key or a platform admin may read it."""
        if self.open:
            return
        token, scrape = _bearer_token(authorization), self._metrics_token
        if token is not None and scrape is not None and hmac.compare_digest(token.encode(), scrape):
            return
        if not self.authenticate(authorization).is_platform:
            raise PermissionDenied("/metrics needs the metrics token, the master key or a platform admin key")

    def _lookup(self, token: str | None) -> ApiKey | None:
        if self._keys is None or token is None or not token.startswith(KEY_PREFIX):
            return None
        return self._keys.lookup(token)

    def _caller(self, key: ApiKey) -> Caller:
        assert self._keys is not None  # a key was found in it
        limits, scopes = self._keys.tenant(key.tenant).limits, key.scopes
        return Caller(key.id, key.tenant, scopes.admin or scopes.platform, scopes, limits, scopes.platform)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
