"""``GET /v1/audit``: the calling tenant's audit log, newest first."""

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.errors import ApiError, ErrorResponse
from api.paging import next_page_link
from api.schemas import AuditEntryOut, AuditListOut, AuditQuery, JobPageLinks
from services import audit
from services.jobs import InvalidCursor

audit_api = APIBlueprint(
    "audit",
    __name__,
    url_prefix="/v1/audit",
    abp_tags=[
        Tag(
            name="audit",
            description="Who exported, erased, or made or revoked keys, and when: one entry "
            "per action, never the text it concerned.",
        )
    ],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse},
)
audit_api.before_request(require_api_key)


@audit_api.get("", summary="List audit entries", responses={200: AuditListOut})
def list_audit(query: AuditQuery) -> tuple[Response, int]:
    """The tenant's audit entries, newest first, optionally of one `action` and `since`
    a time; a page at a time (follow `links.next`)."""
    try:
        page = audit.entries(
            current_app.extensions["convoq.settings"].database_url,
            current_principal().tenant_id,
            action=query.action,
            since=query.since,
            cursor=query.cursor,
            limit=query.limit,
        )
    except InvalidCursor as exc:
        raise ApiError.invalid("cursor", str(exc), "invalid_cursor") from exc
    next_link = next_page_link("audit.list_audit", query, page.next_cursor)
    body = AuditListOut(
        entries=[
            AuditEntryOut.model_validate(entry, from_attributes=True) for entry in page.entries
        ],
        next_cursor=page.next_cursor,
        links=JobPageLinks(next=next_link),
    )
    return jsonify(body.model_dump(mode="json")), 200
