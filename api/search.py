"""``POST /v1/search``: the tenant's memory, searched by meaning."""

import logging

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.content import require_json_body
from api.errors import ErrorResponse, gpu_pool_errors
from api.redaction import tenant_redactor
from api.schemas import SearchHitOut, SearchIn, SearchOut
from services import gpu_rpc

log = logging.getLogger(__name__)

search_api = APIBlueprint(
    "search",
    __name__,
    url_prefix="/v1/search",
    abp_tags=[Tag(name="search", description="Find stored messages, summaries and texts.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse},
)
search_api.before_request(require_api_key)
search_api.before_request(require_json_body)


@search_api.post(
    "",
    summary="Search memory",
    responses={
        200: SearchOut,
        400: ErrorResponse,
        413: ErrorResponse,
        415: ErrorResponse,
        503: ErrorResponse,
        504: ErrorResponse,
    },
)
def search(body: SearchIn) -> tuple[Response, int]:
    """Embed the query on the gpu pool (ahead of bulk work), then return the tenant's
    nearest vectors, optionally filtered by user, conversation and kind."""
    settings = current_app.extensions["convoq.settings"]
    with gpu_pool_errors("search", "query_embedding_timeout"):
        reply = gpu_rpc.search(
            settings.redis_url,
            tenant_redactor()(body.query),
            tenant=str(current_principal().tenant_id),
            top_k=body.top_k,
            user_id=body.filter.user_id,
            conversation_id=body.filter.conversation_id,
            memory_kind=body.filter.kind,
            timeout=settings.search_embed_timeout,
        )
    body_out = SearchOut(
        hits=[
            SearchHitOut(
                id=hit.id,
                score=hit.score,
                kind=hit.kind,
                user_id=hit.user_id,
                conversation_id=hit.conversation_id,
                text=hit.text,
            )
            for hit in reply.hits
        ]
    )
    return jsonify(body_out.model_dump(mode="json")), 200
