"""``POST /v1/embeddings``: OpenAI's embeddings API, served synchronously by the gpu pool.

Existing OpenAI clients work unchanged: point them at ``<convoq>/v1`` with a
convoq key. The request goes over the gpu pool's interactive lane
(``services.gpu_rpc``), so it takes one of the next forward passes whatever
bulk work waits; no job row is written.

Differences from OpenAI's API, all in the direction of saying no clearly:

- validation errors are 422 (OpenAI answers 400); the ``openai`` package
  raises ``UnprocessableEntityError`` for them, a sibling of
  ``BadRequestError`` under ``APIStatusError``;
- token arrays as ``input`` are refused (422): send text;
- ``dimensions`` is accepted only as the model's own width (384);
- at most ``MAX_TEXTS_PER_JOB`` inputs of ``MAX_TEXT_CHARS`` characters each;
  a longer text is truncated by the model at its window (256 tokens), as
  sentence-transformers does, where OpenAI would refuse it.

Errors keep our shape, ``{"error": {"code", "message", "details"}}``, plus
OpenAI's ``type`` and ``param``, so the ``openai`` exceptions carry them.
"""

import json
import logging

import orjson
from flask import Response, current_app
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.content import require_json_body
from api.errors import ApiError, OpenAIErrorResponse, gpu_pool_errors
from api.redaction import tenant_redactor
from api.schemas import EmbeddingsIn, EmbeddingsOut
from config import Settings
from services import gpu_rpc, vectors

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
HUB_ORGANISATION = "sentence-transformers"

embeddings_api = APIBlueprint(
    "embeddings",
    __name__,
    url_prefix="/v1/embeddings",
    abp_tags=[
        Tag(
            name="embeddings",
            description="OpenAI-compatible embeddings: `OpenAI(base_url=<convoq>/v1, "
            "api_key=<key>).embeddings.create(...)`.",
        )
    ],
    abp_security=[{"bearer": []}],
    abp_responses={401: OpenAIErrorResponse, 422: OpenAIErrorResponse, 429: OpenAIErrorResponse},
)
embeddings_api.before_request(require_api_key)
embeddings_api.before_request(require_json_body)


def served_model_names(settings: Settings) -> dict[str, str]:
    """Each name a request may give the served model by, mapped to its own name: the
    model's name (the directory's, for EMBEDDING_MODEL_PATH) and its hub name."""
    name = settings.embedding_model_path.name if settings.embedding_model_path else None
    name = name or DEFAULT_MODEL_NAME
    return {name: name, f"{HUB_ORGANISATION}/{name}": name}


def _error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


@embeddings_api.after_request
def _openai_error_fields(response: Response) -> Response:
    """Add OpenAI's ``type`` and ``param`` to our error body, whatever raised it."""
    if response.status_code < 400 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "type" in error:
        return response
    details = error.get("details") or [{}]
    field = details[0].get("field") if isinstance(details[0], dict) else None
    error["type"] = _error_type(response.status_code)
    error["param"] = field if isinstance(field, str) else None
    response.set_data(json.dumps(body))
    return response


@embeddings_api.post(
    "",
    summary="Create embeddings (OpenAI-compatible)",
    responses={
        200: EmbeddingsOut,
        400: OpenAIErrorResponse,
        404: OpenAIErrorResponse,
        413: OpenAIErrorResponse,
        415: OpenAIErrorResponse,
        503: OpenAIErrorResponse,
        504: OpenAIErrorResponse,
    },
)
def create_embeddings(body: EmbeddingsIn) -> Response:
    """OpenAI's `POST /v1/embeddings`: unit-length all-MiniLM-L6-v2 vectors for each input,
    in order, and the tokens the model read. 404 (`model_not_found`) for another model."""
    settings: Settings = current_app.extensions["convoq.settings"]
    names = served_model_names(settings)
    if body.model not in names:
        raise ApiError(
            404,
            "model_not_found",
            f"the model {body.model!r} does not exist here; this server embeds with "
            f"{', '.join(repr(name) for name in names)}",
            details=[{"field": "model", "message": "unknown model", "type": "model_not_found"}],
        )
    clean = tenant_redactor()
    with gpu_pool_errors("embeddings", "embeddings_timeout"):
        reply = gpu_rpc.embed_texts(
            settings.redis_url,
            [clean(text) for text in body.input],
            tenant=str(current_principal().tenant_id),
            timeout=settings.embeddings_timeout,
        )
    if body.encoding_format == "base64":
        embeddings: list = reply.vectors  # already float32 little-endian, base64
    else:
        embeddings = [vectors.decode_base64(vector) for vector in reply.vectors]
    out = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding}
            for index, embedding in enumerate(embeddings)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": reply.tokens, "total_tokens": reply.tokens},
    }
    # orjson: a 256-text answer holds ~100k floats, which json writes 5-10x slower.
    return Response(orjson.dumps(out), mimetype="application/json")
