"""Request bodies must be JSON: 415 for another media type, 400 for broken JSON.

Bodies over ``MAX_CONTENT_LENGTH`` are refused with 413 by Werkzeug when read.
"""

import json
import math
from typing import Any

import orjson
from flask import Response, request
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


def require_json_body() -> None:
    """``before_request`` hook for routes that take a JSON body."""
    if request.method not in _METHODS_WITH_BODY:
        return
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        )
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
