"""Request bodies must be JSON: 415 for another media type, 400 for broken JSON.

Bodies over ``MAX_CONTENT_LENGTH`` are refused with 413 by Werkzeug when read;
a ``Content-Encoding: gzip`` body is refused with 413 once its decoded size
passes it, and any other encoding but ``identity`` with 415.
"""

import json
import math
import zlib
from typing import Any

import orjson
from flask import Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest

from api.errors import ApiError


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class StrictJSONProvider(DefaultJSONProvider):
    """Standard JSON only, read strictly and written fast.

    Reading: NaN, Infinity and numbers beyond a double are refused
    (PostgreSQL could not store them), which Python's parser would accept.
    Writing: orjson, keys sorted as Flask sorts them; a job's result holds
    hundreds of floats, which the standard library writes several times slower.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return json.loads(s, parse_constant=_reject_constant, parse_float=_finite_float, **kwargs)

    def _bytes(self, obj: Any) -> bytes:
        return orjson.dumps(obj, default=self.default, option=_ORJSON_OPTIONS)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self._bytes(obj).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self._bytes(obj) + b"\n", mimetype=self.mimetype)


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


_METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}
# POST routes that take no body: whatever is sent is ignored.
_BODILESS_ENDPOINTS = {"jobs.cancel_job"}


def require_json_body() -> None:
    """``before_request`` hook for routes that take a JSON body."""
    if request.method not in _METHODS_WITH_BODY or request.endpoint in _BODILESS_ENDPOINTS:
        return
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        )
    _decode_content()
    try:
        body = request.get_json()
    except BadRequest as exc:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid_json", "the body's JSON is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(
            422,
            "validation_error",
            "body: the body must be a JSON object",
            details=[{"field": "body", "message": "must be a JSON object", "type": "dict_type"}],
        )


_IDENTITY = "identity"
_GZIP = {"gzip", "x-gzip"}
# Decoded this many bytes at a time: a bomb is stopped one chunk past the limit.
_CHUNK_BYTES = 64 * 1024


def _decode_content() -> None:
    """Decode a gzip body in place (``request.get_json`` then reads it); 415 for an
    encoding other than gzip or identity, 413 past ``MAX_CONTENT_LENGTH`` decoded."""
    header = request.headers.get("Content-Encoding", "")
    codings = [coding.strip().lower() for coding in header.split(",") if coding.strip()]
    codings = [coding for coding in codings if coding != _IDENTITY]
    if not codings:
        return
    if len(codings) > 1 or codings[0] not in _GZIP:
        raise ApiError(
            415,
            "unsupported_content_encoding",
            f"Content-Encoding {header!r} is not supported: send gzip or identity",
            headers={"Accept-Encoding": "gzip, identity"},
        )
    request._cached_data = _gunzip(request.get_data(), current_app.config["MAX_CONTENT_LENGTH"])


def _gunzip(data: bytes, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    chunks, size = [], 0
    try:
        chunk = decoder.decompress(data, _CHUNK_BYTES)
        while chunk:
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"the decoded body is larger than the limit of {limit:,} bytes",
                )
            chunks.append(chunk)
            chunk = decoder.decompress(decoder.unconsumed_tail, _CHUNK_BYTES)
    except zlib.error as exc:
        raise ApiError(400, "invalid_gzip", f"the gzip body could not be decoded: {exc}") from exc
    if not decoder.eof or decoder.unused_data:
        raise ApiError(400, "invalid_gzip", "the gzip body is truncated or has trailing data")
    return b"".join(chunks)
