"""Bearer-key authentication: every /v1 route needs ``Authorization: Bearer <key>``."""

import time

from flask import current_app, g, request

from api.errors import ApiError
from config.logs import bind_tenant
from services.tenants import Principal, authenticate

# A key checked within this many seconds is not looked up again; a revoked key
# stops working at most this long after its revocation.
_CACHE_SECONDS = 10.0
_MAX_CACHED = 1024
_cache: dict[str, tuple[float, Principal]] = {}

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="convoq"'}


def _principal_for(key: str) -> Principal | None:
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    principal = authenticate(current_app.extensions["convoq.settings"].database_url, key)
    if principal is not None:
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        _cache[key] = (now, principal)
    return principal


def _bearer_key() -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def request_principal() -> Principal | None:
    """The caller's principal, once per request (the rate limiter asks first)."""
    if "principal" not in g:
        key = _bearer_key()
        g.principal = _principal_for(key) if key is not None and len(key) <= 256 else None
    return g.principal


def require_api_key() -> None:
    """``before_request`` hook: resolve the caller's tenant or answer 401."""
    if _bearer_key() is None:
        raise ApiError(
            401,
            "unauthorized",
            "send your API key as 'Authorization: Bearer <key>'",
            headers=_CHALLENGE,
        )
    principal = request_principal()
    if principal is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", headers=_CHALLENGE)
    bind_tenant(principal.tenant_name)


def current_principal() -> Principal:
    return g.principal
