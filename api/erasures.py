"""Erasure (the right to be forgotten): ``DELETE /v1/users/<id>``, and the erasure's state.

``DELETE /v1/conversations/<id>`` lives with the conversations (``api.conversations``)
and answers the same way, through ``accept``. The work is done by the cpu pool
(``services.erasure``).
"""

import logging

from flask import Response, current_app, jsonify, url_for
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.errors import ApiError, ErrorResponse
from api.schemas import AcceptedErasureOut, ErasureOut, ErasurePath, UserPath
from models import ErasureTarget
from services import erasure

log = logging.getLogger(__name__)

erasures_api = APIBlueprint(
    "erasures",
    __name__,
    abp_tags=[
        Tag(
            name="erasure",
            description="Forget a user or a conversation in PostgreSQL, Milvus and Redis.",
        )
    ],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse},
)
erasures_api.before_request(require_api_key)

ERASURE_DESCRIPTION = (
    "Answers 202 with the erasure and its `Location`; the cpu pool carries it out, "
    "retrying until PostgreSQL, Milvus and Redis each confirm that nothing is left. "
    "Queued and running jobs of the target are canceled, and no job writes its data "
    "back afterwards. Asked again while it is underway: the same erasure. Asked after it "
    "ended: a new one, which finds nothing (its counts stay 0). An id nothing was ever "
    "stored under is erased the same way (202, counts 0): the answer does not tell "
    "whether anything was there."
)


def accept(target: ErasureTarget, target_id: str) -> tuple[Response, int, dict[str, str]]:
    """Record the erasure (audited) and send it to the cpu pool: 202 with the erasure.

    A send that fails is only logged: the row is the request, and
    ``tasks.erasure.resend_erasures`` sends it once the broker is back.
    """
    principal = current_principal()
    settings = current_app.extensions["convoq.settings"]
    requested = erasure.request_erasure(
        settings.database_url,
        principal.tenant_id,
        target,
        target_id,
        actor=principal.key_prefix,
    )
    row = requested.erasure
    if requested.created:
        try:
            erasure.send(current_app.extensions["celery"], [row.id])
        except Exception:
            log.warning(
                "could not send the erasure; the sweep will",
                extra={"erasure_id": str(row.id)},
                exc_info=True,
            )
    body = ErasureOut.from_row(row).model_dump(mode="json")
    return jsonify(body), 202, {"Location": url_for("erasures.get_erasure", erasure_id=row.id)}


@erasures_api.delete(
    "/v1/users/<user_id>",
    summary="Erase a user",
    description=ERASURE_DESCRIPTION,
    responses={202: AcceptedErasureOut},
)
def erase_user(path: UserPath) -> tuple[Response, int, dict[str, str]]:
    """Everything stored for the user: their conversations (messages and summaries),
    the jobs that carried their `user_id` or posted to their conversations, their
    vectors, and searches for them waiting on the gpu pool."""
    return accept(ErasureTarget.USER, path.user_id)


@erasures_api.get(
    "/v1/erasures/<uuid:erasure_id>",
    summary="Get an erasure",
    responses={200: ErasureOut, 404: ErrorResponse},
)
def get_erasure(path: ErasurePath) -> tuple[Response, int]:
    """Its status, attempts, what each store gave up so far, and when."""
    settings = current_app.extensions["convoq.settings"]
    row = erasure.get_erasure(settings.database_url, current_principal().tenant_id, path.erasure_id)
    if row is None:
        raise ApiError(404, "erasure_not_found", f"no erasure with id {str(path.erasure_id)!r}")
    return jsonify(ErasureOut.from_row(row).model_dump(mode="json")), 200
