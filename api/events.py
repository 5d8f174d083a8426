"""``GET /v1/jobs/<id>/events``: a job's status and progress as server-sent events.

The events are derived from the job's row, never stored: each state of the
row has an id ``<attempts>.<stage>.<done>`` (stage 1 running, 2 queued, 3
final), and ids only grow along a job's life, a job put back in the queue
and started again included::

    0.2.0 queued → 1.1.0 running → 1.1.1 progress → … → 1.3.2 succeeded

A stream sends the row's state when its id is above the last one sent (or
the client's ``Last-Event-ID``), so a client that reconnects gets what
changed since, and nothing twice. A state that passes faster than the stream
reads the row (a job started and finished between two reads) is passed over:
the stream always ends with the final state. It is woken by the same per-process
listener as the sync wait (``services.notify``, which workers tell when jobs
start, make progress or end); it also reads the row at each keepalive, so a
lost notification costs time only. A stream ends with the job's final event
(the job as GET returns it), or after ``event_stream_max_seconds`` (the
client reconnects). A client whose last event was the final one gets 204,
which tells an ``EventSource`` to stop reconnecting.
"""

import time
import uuid
from collections.abc import Iterator

from flask import Response, current_app
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import Row

from api.auth import current_principal, require_api_key
from api.errors import ApiError, ErrorResponse
from api.schemas import JobOut, JobPath, LastEventIdHeader
from config import Settings
from models import FINISHED_STATUSES, JobStatus
from services import notify
from services.jobs import JobNotFound, JobStore

events_api = APIBlueprint(
    "job_events",
    __name__,
    url_prefix="/v1/jobs",
    abp_tags=[Tag(name="jobs")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse},
)
events_api.before_request(require_api_key)

EventKey = tuple[int, int, int]
RUNNING_STAGE, QUEUED_STAGE, FINAL_STAGE = 1, 2, 3
# How long an EventSource waits before it reconnects, in milliseconds.
RECONNECT_MS = 1000

# One event of the stream (OpenAPI 3.1: the media type's schema is the event's).
EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": r"^\d+\.[123]\.\d+$"},
        "event": {
            "type": "string",
            "enum": ["queued", "running", "progress", "succeeded", "failed", "canceled"],
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The job, as `GET /v1/jobs/<id>` returns it.",
        },
        "retry": {"type": "integer"},
    },
}

STREAM_RESPONSES = {
    200: {
        "description": "`text/event-stream`: one event per change of the job's status or "
        "progress (`queued`, `running`, `progress`, then `succeeded`, `failed` or "
        "`canceled`), each with an `id` and the job as JSON; the stream ends after the "
        "final event, which carries the job as `GET /v1/jobs/<id>` returns it.",
        "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
    },
    204: None,
    404: ErrorResponse,
}


def event_key(job: Row) -> EventKey:
    status = JobStatus(job.status)
    if status in FINISHED_STATUSES:
        return (job.attempts, FINAL_STAGE, job.progress_done)
    if status is JobStatus.RUNNING:
        return (job.attempts, RUNNING_STAGE, job.progress_done)
    return (job.attempts, QUEUED_STAGE, 0)


def format_key(key: EventKey) -> str:
    return ".".join(map(str, key))


def parse_key(raw: str | None) -> EventKey | None:
    """A ``Last-Event-ID`` this API sent; None for anything else (all is sent again)."""
    parts = (raw or "").strip().split(".")
    if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
        return None
    attempts, stage, done = (int(part) for part in parts)
    return (attempts, stage, done)


def event_name(job: Row, key: EventKey, last: EventKey | None) -> str:
    """The status, except ``progress`` for a running job whose start was already sent."""
    if key[1] == RUNNING_STAGE and last is not None and last[:2] == key[:2]:
        return "progress"
    return JobStatus(job.status).value


def format_event(job: Row, key: EventKey, last: EventKey | None) -> str:
    data = JobOut.from_job(job, job.params.get("encoding_format") or "float")
    return (
        f"id: {format_key(key)}\nevent: {event_name(job, key, last)}\n"
        f"data: {data.model_dump_json()}\n\n"
    )


def job_events(
    store: JobStore,
    tenant_id: uuid.UUID,
    job: Row,
    watch: notify.ChangeWait,
    last: EventKey | None,
    settings: Settings,
) -> Iterator[str]:
    """The stream from ``job`` (read after ``watch`` was registered) on."""
    listener = notify.listener(settings.redis_url)
    deadline = time.monotonic() + settings.event_stream_max_seconds
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            key = event_key(job)
            if last is None or key > last:
                yield format_event(job, key, last)
                last = key
            if key[1] == FINAL_STAGE:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not watch.event.wait(min(settings.event_keepalive_seconds, left)):
                yield ": keepalive\n\n"
            watch.event.clear()  # before the read: a change after it wakes the next wait
            found = store.get_many(tenant_id, [job.id])
            if not found:
                return  # deleted meanwhile
            job = found[0]
    finally:
        listener.unwatch_changes(watch)


@events_api.get(
    "/<uuid:job_id>/events", summary="Follow a job's events", responses=STREAM_RESPONSES
)
def job_events_stream(path: JobPath, header: LastEventIdHeader) -> Response:
    """Server-sent events of the job's status and progress until it ends (`curl -N`,
    or an `EventSource`). Reconnect with `Last-Event-ID` to go on where you left off;
    204 when that was already the final event."""
    settings: Settings = current_app.extensions["convoq.settings"]
    store: JobStore = current_app.extensions["convoq.jobs"]
    tenant_id = current_principal().tenant_id
    job_id = path.job_id
    listener = notify.listener(settings.redis_url)
    watch = listener.watch_changes(job_id)  # before the read: no change goes unheard
    try:
        job = store.get(tenant_id, job_id)
    except JobNotFound as exc:
        listener.unwatch_changes(watch)
        raise ApiError(404, "job_not_found", f"no job with id {str(job_id)!r}") from exc
    last = parse_key(header.last_event_id)
    key = event_key(job)
    if key[1] == FINAL_STAGE and last is not None and last >= key:
        listener.unwatch_changes(watch)
        return Response(status=204)
    response = Response(
        job_events(store, tenant_id, job, watch, last, settings),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # Also when the client left before the stream started (its finally never runs).
    response.call_on_close(lambda: listener.unwatch_changes(watch))
    return response
