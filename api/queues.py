"""``GET /v1/queues``: how deep each queue is, who works it, and what the scaling rule says."""

import logging

import redis
from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.auth import require_api_key
from api.errors import ApiError, ErrorResponse
from api.schemas import QueueOut, QueuesOut, ScalingRuleOut
from worker.broker import broker_client
from worker.scaling import pool_states

log = logging.getLogger(__name__)

queues_api = APIBlueprint(
    "queues",
    __name__,
    url_prefix="/v1/queues",
    abp_tags=[Tag(name="queues", description="Queue depth and scaling.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 429: ErrorResponse},
)
queues_api.before_request(require_api_key)


@queues_api.get(
    "", summary="Queue depth and workers", responses={200: QueuesOut, 503: ErrorResponse}
)
def queues() -> tuple[Response, int]:
    """Read from Redis alone, never by asking the workers, so it answers at once
    even when no worker is running."""
    settings = current_app.extensions["convoq.settings"]
    try:
        states = pool_states(broker_client(settings.redis_url), settings)
    except redis.RedisError as exc:
        log.warning("could not read the queues", extra={"error": str(exc)})
        raise ApiError(503, "broker_unavailable", "the job queue could not be reached") from exc
    body = QueuesOut(
        queues={
            name: QueueOut(
                waiting=state.depth.waiting,
                unacked=state.depth.unacked,
                depth=state.depth.total,
                workers=state.workers,
                recommended_replicas=state.recommended_replicas,
                scaling=ScalingRuleOut(**state.rule.model_dump()),
            )
            for name, state in states.items()
        }
    )
    return jsonify(body.model_dump()), 200
