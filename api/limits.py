"""Rate limits per tenant (Flask-Limiter on Redis): 429 with ``Retry-After``.

Only ``/v1`` requests with a valid API key count, keyed by their tenant: health,
readiness, metrics and the documents are never limited, and a request without a
valid key gets its 401 from ``api.auth``. One fixed-window counter per tenant
for all routes, one Redis round trip per request. When Redis cannot be reached
the request is let through (and logged), never answered 500.
"""

import math
import time

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded

from api.auth import request_principal
from api.errors import error_response
from config import Settings

# Seconds: a Redis that does not answer delays a request this much, not more.
_REDIS_TIMEOUT_SECONDS = 0.25


def _tenant_key() -> str:
    principal = request_principal()
    return f"tenant:{principal.tenant_id}" if principal is not None else "anonymous"


def _not_limited() -> bool:
    return not request.path.startswith("/v1/") or request_principal() is None


def tenant_limit(settings: Settings) -> str:
    """The limit of the calling tenant: its own from ``rate_limit_tenants``, or the default."""
    principal = request_principal()
    if principal is None:
        return settings.rate_limit
    return settings.rate_limit_tenants.get(principal.tenant_name, settings.rate_limit)


def init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        _tenant_key,
        app=app,
        application_limits=[lambda: tenant_limit(settings)],
        strategy="fixed-window",
        storage_uri=settings.redis_url,
        storage_options={
            "socket_connect_timeout": _REDIS_TIMEOUT_SECONDS,
            "socket_timeout": _REDIS_TIMEOUT_SECONDS,
        },
        swallow_errors=True,
        key_prefix="convoq-rate",
        enabled=settings.rate_limit_enabled,
    )
    limiter.request_filter(_not_limited)

    @app.errorhandler(RateLimitExceeded)
    def _too_many_requests(exc: RateLimitExceeded) -> Response:
        return error_response(
            429,
            "rate_limited",
            f"the tenant's rate limit of {exc.limit.limit} was reached; "
            "retry after the seconds in Retry-After",
            headers={"Retry-After": str(_retry_after(limiter))},
        )

    app.extensions["convoq.limiter"] = limiter
    return limiter


def _retry_after(limiter: Limiter) -> int:
    """Whole seconds until the window that was exceeded resets (at least 1)."""
    try:
        current = limiter.current_limit
        reset_at = current.reset_at if current is not None else time.time() + 1
    except Exception:
        current_app.logger.warning("could not read the rate-limit window", exc_info=True)
        return 1
    return max(1, math.ceil(reset_at - time.time()))
