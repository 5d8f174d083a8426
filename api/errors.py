"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``."""

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from api.schemas import JOB_TYPE_TAGS
from services import gpu_rpc

log = logging.getLogger(__name__)

# Errors where the discriminator of a tagged union is missing or unknown: pydantic
# places them on the object, not on its discriminator field.
_DISCRIMINATOR_ERRORS = {"union_tag_invalid", "union_tag_not_found"}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel):
    """Returned with every 4xx and 5xx status."""

    error: ErrorBody


class OpenAIErrorBody(ErrorBody):
    type: str = Field(
        description="OpenAI's error class: `invalid_request_error`, `authentication_error`, "
        "`rate_limit_error` or `server_error`."
    )
    param: str | None = Field(description="The request field at fault, if one is.")


class OpenAIErrorResponse(BaseModel):
    """Our error shape plus OpenAI's `type` and `param`, so OpenAI clients read it."""

    error: OpenAIErrorBody


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    @classmethod
    def invalid(cls, field: str, message: str, error_type: str) -> "ApiError":
        """A 422 naming the field, shaped like the schema's own validation errors."""
        return cls(
            422,
            "validation_error",
            f"{field}: {message}",
            details=[{"field": field, "message": message, "type": error_type}],
        )


@contextmanager
def gpu_pool_errors(what: str, timeout_code: str) -> Iterator[None]:
    """What an interactive request to the gpu pool (``services.gpu_rpc``) answers
    when it fails: 504 when no gpu worker answered in time, 503 otherwise."""
    try:
        yield
    except gpu_rpc.GpuTimeout as exc:
        raise ApiError(
            504, timeout_code, f"{exc}: the gpu workers are busy or not running; try again"
        ) from exc
    except gpu_rpc.GpuUnavailable as exc:
        raise ApiError(
            503,
            "broker_unavailable",
            "the gpu pool could not be reached; try again shortly",
            headers={"Retry-After": "5"},
        ) from exc
    except gpu_rpc.GpuRequestFailed as exc:
        log.error(f"{what} failed", extra={"code": exc.code, "error": str(exc)})
        raise ApiError(503, exc.code, f"the {what} could not be made: {exc}") from exc


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or []}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


# Codes for the HTTP errors Flask and Werkzeug raise on their own.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def field_path(error: Mapping[str, Any]) -> str:
    """The dotted path of the field a pydantic error is about, as the request spells it.

    A tagged union puts the tag in the location (``jobs.3.embed.texts``); it is
    left out (``jobs.3.texts``). An unknown or missing tag is about the
    discriminator field (``jobs.3.type``).
    """
    parts: list[str] = []
    previous: object = None
    for part in error["loc"]:
        is_tag = isinstance(previous, int) and part in JOB_TYPE_TAGS
        previous = part
        if not is_tag:
            parts.append(str(part))
    if error["type"] in _DISCRIMINATOR_ERRORS:
        parts.append(str(error.get("ctx", {}).get("discriminator", "type")).strip("'"))
    return ".".join(parts) or "body"


def validation_error_response(exc: ValidationError) -> Response:
    """422 naming each offending field (flask-openapi3's validation callback)."""
    details = [
        {"field": field_path(error), "message": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(422, "validation_error", summary, details)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, (exc.name or "error").lower().replace(" ", "_"))
        message = exc.description or exc.name
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        if isinstance(exc, RequestEntityTooLarge):
            message = (
                f"the body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']:,} bytes"
            )
        return error_response(status, code, message, headers=headers)

    # PostgreSQL or Redis away (restarting, stopped, or every pooled connection
    # stuck on it): 503 with Retry-After, whatever route met it.
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeoutError)
    def _database_unavailable(exc: Exception) -> Response:
        log.error("database unavailable", extra={"error": str(exc)[:500]})
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; try again shortly",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    @app.errorhandler(BrokerError)
    def _broker_unavailable(exc: Exception) -> Response:
        log.error("broker unavailable", extra={"error": str(exc)[:500]})
        return error_response(
            503,
            "broker_unavailable",
            "the job queue could not be reached; try again shortly",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
