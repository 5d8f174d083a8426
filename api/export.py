"""``GET /v1/users/<id>/export``: everything stored for a user, as one streamed JSON document.

The document is written as the rows are read (``services.export``, a page at
a time), in chunks of about ``CHUNK_BYTES``: the response has no
``Content-Length`` and is sent chunked, and neither the API nor the database
holds more than a page of it.

Each export is audited (``user.export``) before its first byte is sent, so a
disclosure is never unrecorded, and again when it ends: ``completed`` with
the counts of what was sent, ``interrupted`` when the client left, or
``failed``. A user of whom nothing is stored gets an empty export: there is
no user registry to say "unknown", and "nothing stored" is the whole answer.
"""

import logging
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Response, current_app, stream_with_context
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import Row

from api.auth import current_principal, require_api_key
from api.errors import ErrorResponse
from api.schemas import UserExportOut, UserExportPath
from services import audit
from services.export import Record, user_records

log = logging.getLogger(__name__)

export_api = APIBlueprint(
    "user_export",
    __name__,
    url_prefix="/v1/users",
    abp_tags=[Tag(name="users", description="What is stored for one of your users.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse},
)
export_api.before_request(require_api_key)

# Bytes gathered before a chunk is sent: few writes, and little held.
CHUNK_BYTES = 64 * 1024


def _message(row: Row) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "role": row.role,
        "content": row.content,
        "id": row.client_id,
        "created_at": row.created_at,
    }


def _summary(row: Row) -> dict[str, Any]:
    return {
        "upto_seq": row.upto_seq,
        "text": row.text,
        "method": row.method,
        "model": row.model,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "created_at": row.created_at,
    }


def _job(row: Row) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "type": row.type,
        "status": row.status,
        "attempts": row.attempts,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "params": row.params,
        "result": row.result,
        "error": {"code": row.error_code, "message": row.error_message or ""}
        if row.error_code
        else None,
    }


def _conversation_head(row: Row) -> bytes:
    """The conversation's fields, its object left open for its lists."""
    head = orjson.dumps(
        {
            "conversation_id": row.external_id,
            "user_id": row.user_id,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )
    return head[:-1] + b',"messages":['


class _Chunks:
    """Bytes gathered into chunks of about ``CHUNK_BYTES``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> Iterator[bytes]:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= CHUNK_BYTES:
            yield self.rest()

    def rest(self) -> bytes:
        chunk = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return chunk


_PLURALS = {
    "conversation": "conversations",
    "message": "messages",
    "summary": "summaries",
    "job": "jobs",
}
_ITEMS = {"message": _message, "summary": _summary, "job": _job}
# What closes the conversation being written, by the list the writer is in.
_CLOSE_CONVERSATION = {"": b"", "message": b'],"summaries":[]}', "summary": b"]}"}


def export_document(
    user_id: str, records: Iterable[Record], counts: dict[str, int]
) -> Iterator[bytes]:
    """The export as chunks of JSON (``UserExportOut``), counting the records in ``counts``."""
    out = _Chunks()
    exported_at = orjson.dumps(datetime.now(UTC))
    yield from out.add(
        b'{"user_id":' + orjson.dumps(user_id) + b',"exported_at":' + exported_at
        + b',"conversations":['
    )  # fmt: skip
    # The list being written: "" (between conversations), "message" or "summary"
    # (of a conversation), or "job"; and whether it has an item yet.
    inside, empty = "", True
    for kind, row in records:
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "conversation":
            comma = b"," if counts[kind] > 1 else b""
            yield from out.add(_CLOSE_CONVERSATION[inside] + comma + _conversation_head(row))
            inside, empty = "message", True
            continue
        if kind == "summary" and inside == "message":
            yield from out.add(b'],"summaries":[')
            inside, empty = "summary", True
        elif kind == "job" and inside != "job":
            yield from out.add(_CLOSE_CONVERSATION[inside] + b'],"jobs":[')
            inside, empty = "job", True
        yield from out.add((b"" if empty else b",") + orjson.dumps(_ITEMS[kind](row)))
        empty = False
    if inside != "job":
        yield from out.add(_CLOSE_CONVERSATION[inside] + b'],"jobs":[')
    yield from out.add(b"]}")
    if out.parts:
        yield out.rest()


@export_api.get(
    "/<user_id>/export",
    summary="Export a user's data",
    responses={200: UserExportOut},
)
def export_user(path: UserExportPath) -> Response:
    """Everything stored for the user: their conversations with every message and
    summary, and their jobs with parameters and results (data portability). Streamed:
    read it to the end, it is one JSON document."""
    settings = current_app.extensions["convoq.settings"]
    principal = current_principal()
    user_id = path.user_id
    entry = {
        "tenant_id": principal.tenant_id,
        "actor": principal.key_prefix,
        "action": "user.export",
        "target_type": "user",
        "target_id": user_id,
    }
    export_id = str(uuid.uuid4())
    audit.record_now(
        settings.database_url, **entry, details={"outcome": "started", "export_id": export_id}
    )
    records = user_records(settings.database_url, principal.tenant_id, user_id)

    def stream() -> Iterator[bytes]:
        counts: dict[str, int] = {}
        outcome = "interrupted"
        try:
            yield from export_document(user_id, records, counts)
            outcome = "completed"
        except Exception:
            outcome = "failed"
            log.exception("export failed", extra={"export_id": export_id})
            raise
        finally:
            details = {"outcome": outcome, "export_id": export_id}
            details.update({_PLURALS[kind]: count for kind, count in counts.items()})
            audit.record_now(settings.database_url, **entry, details=details)

    return Response(
        stream_with_context(stream()),
        mimetype="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="convoq-export-{user_id}.json"',
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        },
    )
