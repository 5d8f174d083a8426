"""Typed exceptions for the API's error shape ``{"error": {"code", "message", "details"}}``.

Catch ``ConvoqError`` for everything, or a subclass for one status; ``code`` is the
API's machine-readable reason (``job_not_found``, ``rate_limited``...), which is
finer than the status."""

from typing import Any


class ConvoqError(Exception):
    """An answer of 4xx or 5xx, or no answer at all (``status`` 0)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "error",
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class ConnectionFailed(ConvoqError):
    """The API could not be reached, or dropped the connection, on every attempt."""


class BadRequest(ConvoqError):
    """400, 413, 415: a request the API could not read."""


class Unauthorized(ConvoqError):
    """401: no key, or a key the API does not know (or revoked)."""


class Forbidden(ConvoqError):
    """403."""


class NotFound(ConvoqError):
    """404: unknown, or another tenant's."""


class Conflict(ConvoqError):
    """409: a job already finished, or an Idempotency-Key reused with another body."""


class ValidationError(ConvoqError):
    """422: ``details`` names each field at fault."""


class RateLimited(ConvoqError):
    """429, after the client's retries ran out."""


class ServerError(ConvoqError):
    """5xx other than 503."""


class ServiceUnavailable(ServerError):
    """503 (a store or the broker down), after the client's retries ran out."""


class JobTimeout(TimeoutError):
    """``wait`` ran past its timeout; ``job`` is the job as last seen."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} still {job.status}")
        self.job = job


_BY_STATUS: dict[int, type[ConvoqError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(status: int, body: Any, headers: dict[str, str] | None = None) -> ConvoqError:
    """The exception for an error answer, whatever its body turned out to be."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": f"http_{status}", "message": str(body)[:200] or f"HTTP {status}"}
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ConvoqError)
    return kind(
        str(error.get("message", "")),
        status=status,
        code=str(error.get("code", f"http_{status}")),
        details=error.get("details") if isinstance(error.get("details"), list) else [],
        headers=headers,
    )
