"""``POST /v1/search``: the tenant's memory, searched by meaning."""

import logging

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.content import require_json_body
from api.errors import ApiError, ErrorResponse
from api.schemas import SearchHitOut, SearchIn, SearchOut
from services.search import QueryEmbeddingFailed, QueryEmbeddingTimeout, embed_query
from vectorstore import get_memory_store

log = logging.getLogger(__name__)

search_api = APIBlueprint(
    "search",
    __name__,
    url_prefix="/v1/search",
    abp_tags=[Tag(name="search", description="Find stored messages, summaries and texts.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse},
)
search_api.before_request(require_api_key)
search_api.before_request(require_json_body)


@search_api.post(
    "",
    summary="Search memory",
    responses={
        200: SearchOut,
        400: ErrorResponse,
        415: ErrorResponse,
        503: ErrorResponse,
        504: ErrorResponse,
    },
)
def search(body: SearchIn) -> tuple[Response, int]:
    """Embed the query on the gpu pool (ahead of waiting jobs), then return the
    tenant's nearest vectors, optionally filtered by user, conversation and kind."""
    settings = current_app.extensions["convoq.settings"]
    try:
        vector = embed_query(
            current_app.extensions["celery"], body.query, timeout=settings.search_embed_timeout
        )
    except QueryEmbeddingTimeout as exc:
        raise ApiError(
            504,
            "query_embedding_timeout",
            f"{exc}: the gpu workers are busy or not running; try again",
        ) from exc
    except QueryEmbeddingFailed as exc:
        log.error("query embedding failed", exc_info=True)
        raise ApiError(
            503, "query_embedding_failed", f"the query could not be embedded: {exc}"
        ) from exc
    hits = get_memory_store(settings).search(
        str(current_principal().tenant_id),
        vector,
        top_k=body.top_k,
        user_id=body.filter.user_id,
        conversation_id=body.filter.conversation_id,
        kind=body.filter.kind,
    )
    body_out = SearchOut(
        hits=[
            SearchHitOut(
                id=hit.id,
                score=hit.score,
                kind=hit.kind.value,
                user_id=hit.user_id,
                conversation_id=hit.conversation_id,
                text=hit.text,
            )
            for hit in hits
        ]
    )
    return jsonify(body_out.model_dump(mode="json")), 200
