"""``/v1/jobs``: submit, read, list and cancel jobs."""

import logging
from typing import Any

from celery import Celery
from flask import Response, current_app, jsonify, url_for
from flask_openapi3 import APIBlueprint, Tag

from api.auth import current_principal, require_api_key
from api.content import require_json_body
from api.errors import ApiError, ErrorResponse
from api.schemas import (
    ConversationJobIn,
    EmbedJobIn,
    JobListOut,
    JobListQuery,
    JobOut,
    JobPath,
    JobSummaryOut,
    SummarizeJobIn,
    SummaryLengths,
)
from config import Settings
from inference.methods import T5NotConfigured, choose_method
from models import Job, JobType
from services.conversations import ConversationStore
from services.dispatch import conversation_steps, publish_job
from services.jobs import (
    InvalidCursor,
    JobAlreadyFinished,
    JobNotFound,
    JobStore,
    PublishFailed,
    parse_job_id,
)

log = logging.getLogger(__name__)

jobs_api = APIBlueprint(
    "jobs",
    __name__,
    url_prefix="/v1/jobs",
    abp_tags=[Tag(name="jobs", description="Submit jobs and poll for their results.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse},
)
jobs_api.before_request(require_api_key)
jobs_api.before_request(require_json_body)


def _store() -> JobStore:
    return current_app.extensions["convoq.jobs"]


def _settings() -> Settings:
    return current_app.extensions["convoq.settings"]


def _job_response(model: JobOut, status: int, **headers: str) -> tuple[Response, int, dict]:
    return jsonify(model.model_dump(mode="json")), status, headers


def _submit(job_type: JobType, params: dict[str, Any], total: int) -> tuple[Response, int, dict]:
    celery: Celery = current_app.extensions["celery"]
    try:
        job = _store().submit(
            tenant_id=current_principal().tenant_id,
            job_type=job_type,
            params=params,
            total=total,
            publish=lambda job: publish_job(celery, job),
        )
    except PublishFailed as exc:
        log.error("job could not be queued", extra={"job_id": str(exc.job.id)}, exc_info=True)
        raise ApiError(
            503,
            "broker_unavailable",
            "the job queue is unavailable; the job was not queued, try again shortly",
            details=[{"job_id": str(exc.job.id)}],
            headers={"Retry-After": "5"},
        ) from exc
    log.info("job queued", extra={"job_id": str(job.id), "job_type": job_type.value})
    location = url_for("jobs.get_job", job_id=str(job.id))
    return _job_response(JobOut.from_job(job), 202, Location=location)


SUBMIT_RESPONSES = {
    202: JobOut,
    400: ErrorResponse,
    413: ErrorResponse,
    415: ErrorResponse,
    503: ErrorResponse,
}


@jobs_api.post("/embed", summary="Submit an embedding job", responses=SUBMIT_RESPONSES)
def submit_embed(body: EmbedJobIn) -> tuple[Response, int, dict]:
    """Embed up to the configured number of texts with all-MiniLM-L6-v2 (384 dimensions)."""
    return _submit(JobType.EMBED, body.model_dump(), total=len(body.texts))


def _summary_params(body: SummaryLengths) -> dict[str, Any]:
    """The lengths and the method that will run; 422 for t5 when none is configured."""
    try:
        method = choose_method(body.method, _settings().summarizer_model_path is not None)
    except T5NotConfigured as exc:
        raise ApiError.invalid("method", str(exc), "t5_not_configured") from exc
    return {
        "method": method,
        "requested_method": body.method,
        "max_length": body.max_length,
        "min_length": body.min_length,
    }


@jobs_api.post("/summarize", summary="Submit a summarization job", responses=SUBMIT_RESPONSES)
def submit_summarize(body: SummarizeJobIn) -> tuple[Response, int, dict]:
    """Summarise a text with T5 or extractively. Lengths are in tokens."""
    return _submit(JobType.SUMMARIZE, {"text": body.text, **_summary_params(body)}, total=1)


@jobs_api.post(
    "/conversation",
    summary="Submit a conversation job",
    responses={**SUBMIT_RESPONSES, 409: ErrorResponse},
)
def submit_conversation(body: ConversationJobIn) -> tuple[Response, int, dict]:
    """Store the messages (appended to the conversation), summarise the whole
    conversation, and embed and index the new messages and the summary."""
    exists, owner = ConversationStore(_settings().database_url).user_of(
        current_principal().tenant_id, body.conversation_id
    )
    if exists and owner is not None and body.user_id is not None and owner != body.user_id:
        raise ApiError(
            409,
            "conversation_user_mismatch",
            f"conversation {body.conversation_id!r} belongs to another user_id",
            details=[{"field": "user_id"}],
        )
    params = {
        "conversation_id": body.conversation_id,
        "user_id": body.user_id,
        "messages": [message.model_dump() for message in body.messages],
        "summarize": body.summarize,
        "embed": body.embed,
        **_summary_params(body),
    }
    return _submit(
        JobType.CONVERSATION, params, total=conversation_steps(body.summarize, body.embed)
    )


def _find_job(job_id: str) -> Job:
    try:
        return _store().get(current_principal().tenant_id, parse_job_id(job_id))
    except JobNotFound as exc:
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}") from exc


@jobs_api.get("/<job_id>", summary="Get a job", responses={200: JobOut, 404: ErrorResponse})
def get_job(path: JobPath) -> tuple[Response, int, dict]:
    """The job's status, progress and, once it has succeeded, its result."""
    return _job_response(JobOut.from_job(_find_job(path.job_id)), 200)


@jobs_api.get("", summary="List jobs", responses={200: JobListOut})
def list_jobs(query: JobListQuery) -> tuple[Response, int, dict]:
    """The tenant's jobs, newest first, without their results."""
    try:
        page = _store().list(
            current_principal().tenant_id,
            status=query.status,
            job_type=query.type,
            cursor=query.cursor,
            limit=query.limit,
        )
    except InvalidCursor as exc:
        raise ApiError.invalid("cursor", str(exc), "invalid_cursor") from exc
    next_link = None
    if page.next_cursor is not None:
        filters = query.model_dump(exclude_none=True, exclude={"cursor"}, mode="json")
        next_link = url_for("jobs.list_jobs", cursor=page.next_cursor, **filters)
    body = JobListOut(
        jobs=[JobSummaryOut.from_job(job) for job in page.jobs],
        next_cursor=page.next_cursor,
        links={"next": next_link},
    )
    return jsonify(body.model_dump(mode="json")), 200, {}


@jobs_api.delete(
    "/<job_id>",
    summary="Cancel a job",
    responses={200: JobOut, 404: ErrorResponse, 409: ErrorResponse},
)
def cancel_job(path: JobPath) -> tuple[Response, int, dict]:
    """Cancel a queued or running job; 409 once it has finished."""
    principal = current_principal()
    try:
        job = _store().cancel(
            principal.tenant_id, parse_job_id(path.job_id), actor=principal.key_prefix
        )
    except JobNotFound as exc:
        raise ApiError(404, "job_not_found", f"no job with id {path.job_id!r}") from exc
    except JobAlreadyFinished as exc:
        raise ApiError(
            409,
            "job_finished",
            f"the job has already {exc.job.status.value} and cannot be canceled",
            details=[{"status": exc.job.status.value}],
        ) from exc
    _revoke(str(job.id))
    return _job_response(JobOut.from_job(job), 200)


def _revoke(task_id: str) -> None:
    """Tell the workers to drop the task. The job row already says canceled, so a
    worker that misses the broadcast still skips the job; failure is only logged."""
    try:
        current_app.extensions["celery"].control.revoke(task_id)
    except Exception:
        log.warning("could not broadcast the revocation", extra={"job_id": task_id}, exc_info=True)
