"""``/v1/conversations``: what convoq remembers of a conversation."""

import re

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.erasures import ERASURE_DESCRIPTION, accept
from api.errors import ApiError, ErrorResponse
from api.schemas import (
    IDENTIFIER_PATTERN,
    AcceptedErasureOut,
    ConversationErasurePath,
    ConversationOut,
    ConversationPath,
    ConversationQuery,
    JobLinks,
    MessageOut,
    SummaryOut,
)
from models import ErasureTarget
from services.conversations import ConversationNotFound, ConversationStore, processing_status

conversations_api = APIBlueprint(
    "conversations",
    __name__,
    url_prefix="/v1/conversations",
    abp_tags=[Tag(name="conversations", description="Stored conversations and summaries.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse},
)
conversations_api.before_request(require_api_key)


@conversations_api.get(
    "/<conversation_id>",
    summary="Get a conversation",
    responses={200: ConversationOut, 404: ErrorResponse},
)
def get_conversation(path: ConversationPath, query: ConversationQuery) -> tuple[Response, int]:
    """Its messages (a page at a time), latest summary, and processing status."""
    store = ConversationStore(current_app.extensions["convoq.settings"].database_url)
    try:
        if not re.fullmatch(IDENTIFIER_PATTERN, path.conversation_id):
            # No conversation can have such an id: it is as unknown as any other.
            raise ConversationNotFound(path.conversation_id)
        view = store.view(
            current_principal().tenant_id,
            path.conversation_id,
            after_seq=query.after_seq,
            limit=query.limit + 1,
        )
    except ConversationNotFound as exc:
        raise ApiError(
            404, "conversation_not_found", f"no conversation with id {path.conversation_id!r}"
        ) from exc
    messages = view.messages[: query.limit]
    has_more = len(view.messages) > query.limit
    summary = view.summary
    body = ConversationOut(
        conversation_id=view.conversation.external_id,
        user_id=view.conversation.user_id,
        created_at=view.conversation.created_at,
        updated_at=view.conversation.updated_at,
        status=processing_status(view),
        last_job=JobLinks(self=f"/v1/jobs/{view.last_job.id}") if view.last_job else None,
        messages=[
            MessageOut(seq=m.seq, role=m.role, content=m.content, created_at=m.created_at)
            for m in messages
        ],
        next_after_seq=messages[-1].seq if has_more else None,
        summary=SummaryOut(
            text=summary.text,
            upto_seq=summary.upto_seq,
            method=summary.method,
            model=summary.model,
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            created_at=summary.created_at,
        )
        if summary
        else None,
    )
    return jsonify(body.model_dump(mode="json")), 200


@conversations_api.delete(
    "/<conversation_id>",
    summary="Erase a conversation",
    description=ERASURE_DESCRIPTION,
    responses={202: AcceptedErasureOut},
)
def erase_conversation(path: ConversationErasurePath) -> tuple[Response, int, dict[str, str]]:
    """The conversation's messages and summaries, the jobs that posted to it or named it,
    and its vectors, whoever's user it is."""
    return accept(ErasureTarget.CONVERSATION, path.conversation_id)
