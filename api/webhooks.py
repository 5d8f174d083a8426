"""``/v1/webhooks``: the secret that signs this tenant's webhooks."""

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.errors import ErrorResponse
from api.schemas import WebhookSecretOut
from services.webhooks import rotate_secret, tenant_secret

webhooks_api = APIBlueprint(
    "webhooks",
    __name__,
    url_prefix="/v1/webhooks",
    abp_tags=[
        Tag(
            name="webhooks",
            description="Jobs with a `callback_url` POST their final state there, signed as "
            "Standard Webhooks says (`webhook-id`, `webhook-timestamp`, `webhook-signature`).",
        )
    ],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse},
)
webhooks_api.before_request(require_api_key)


def _database_url() -> str:
    return current_app.extensions["convoq.settings"].database_url


@webhooks_api.get("/secret", summary="Get the webhook secret", responses={200: WebhookSecretOut})
def get_secret() -> tuple[Response, int]:
    """The secret that signs your webhooks, made on first request."""
    secret = tenant_secret(_database_url(), current_principal().tenant_id)
    return jsonify(WebhookSecretOut(secret=secret).model_dump()), 200


@webhooks_api.post(
    "/secret/rotate", summary="Rotate the webhook secret", responses={200: WebhookSecretOut}
)
def rotate() -> tuple[Response, int]:
    """A new secret; webhooks sent from now on are signed with it (retries included)."""
    secret = rotate_secret(_database_url(), current_principal().tenant_id)
    return jsonify(WebhookSecretOut(secret=secret).model_dump()), 200
