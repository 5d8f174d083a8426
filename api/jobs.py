"""``/v1/jobs``: submit, read, list, cancel and delete jobs."""

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from flask import Response, current_app, jsonify, request, url_for
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel
from sqlalchemy import Row

from api.auth import current_principal, require_api_key
from api.content import require_json_body
from api.errors import ApiError, ErrorResponse
from api.paging import next_page_link
from api.redaction import redact_metadata, tenant_redactor
from api.schemas import (
    AcceptedBatchOut,
    AcceptedJobOut,
    BatchItem,
    BatchJobsIn,
    BatchJobsOut,
    ConversationBatchItem,
    ConversationJobIn,
    EmbedBatchItem,
    EmbedJobIn,
    FinishedBatchOut,
    FinishedJobOut,
    JobListOut,
    JobListQuery,
    JobOut,
    JobPath,
    JobQuery,
    JobSummaryOut,
    SubmitHeader,
    SummarizeBatchItem,
    SummarizeJobIn,
    SummaryLengths,
)
from api.waiting import JobWatch, is_final, preferred_wait
from config import Settings
from models import JobType
from services.conversations import ConversationStore
from services.dispatch import conversation_steps, publish_jobs
from services.idempotency import IdempotencyKey, KeyReused, fingerprint
from services.jobs import (
    InvalidCursor,
    JobAlreadyFinished,
    JobNotFound,
    JobStore,
    NewJob,
    PublishFailed,
)
from services.methods import T5NotConfigured, choose_method
from services.vectors import EncodingFormat
from services.webhooks import UnsafeCallbackUrl, check_callback_url
from worker.messages import ForgetMessage, task_args
from worker.queues import TaskName

log = logging.getLogger(__name__)

jobs_api = APIBlueprint(
    "jobs",
    __name__,
    url_prefix="/v1/jobs",
    abp_tags=[Tag(name="jobs", description="Submit jobs and poll for their results.")],
    abp_security=[{"bearer": []}],
    abp_responses={401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse},
)
jobs_api.before_request(require_api_key)
jobs_api.before_request(require_json_body)


def _store() -> JobStore:
    return current_app.extensions["convoq.jobs"]


def _settings() -> Settings:
    return current_app.extensions["convoq.settings"]


def _job_out(job: Row, encoding_format: EncodingFormat | None = None) -> JobOut:
    """The job with its result, vectors in ``encoding_format`` or the one it was sent with."""
    return JobOut.from_job(job, encoding_format or job.params.get("encoding_format") or "float")


def _json(model: BaseModel, status: int, headers: dict[str, str]) -> tuple[Response, int, dict]:
    return jsonify(model.model_dump(mode="json")), status, headers


def _idempotency(header: SubmitHeader) -> IdempotencyKey | None:
    if header.idempotency_key is None:
        return None
    return IdempotencyKey(
        key=header.idempotency_key,
        fingerprint=fingerprint(request.path, request.get_json()),
        seconds=_settings().idempotency_key_seconds,
    )


def _replayed(exc: KeyReused) -> list[Row]:
    """The jobs a reused Idempotency-Key made, for the same request; 409 otherwise."""
    jobs = (
        _store().get_many(current_principal().tenant_id, exc.job_ids, vectors=True)
        if exc.same_request
        else []
    )
    if not jobs:
        why = (
            "the jobs made with it were deleted"
            if exc.same_request
            else "it was used with another request"
        )
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {exc.key!r}: {why}; use a new key",
            details=[{"field": "Idempotency-Key", "key": exc.key}],
        ) from exc
    return jobs


def _submit(
    new_jobs: list[NewJob], wait: int | None, idempotency: IdempotencyKey | None = None
) -> tuple[list[Row], bool]:
    """Write the jobs in one transaction and publish them in one round trip; with
    ``wait``, their rows once all have ended or ``wait`` seconds have passed. True
    with the jobs an earlier request with the same Idempotency-Key made instead."""
    celery: Celery = current_app.extensions["celery"]
    tenant_id = current_principal().tenant_id
    watch: JobWatch | None = None

    def publish(jobs: Sequence[Row]) -> None:
        nonlocal watch
        if wait is not None:
            # Watched before any worker can see them: no end goes unheard.
            watch = JobWatch(_settings().redis_url, [job.id for job in jobs], kind="submit")
        publish_jobs(celery, jobs)

    try:
        try:
            jobs = _store().submit_many(
                tenant_id, new_jobs, publish=publish, idempotency=idempotency
            )
        except KeyReused as exc:
            return _replayed(exc), True
        log.info(
            "jobs queued" if len(jobs) > 1 else "job queued",
            extra={
                "job_id": str(jobs[0].id),
                "job_type": JobType(jobs[0].type).value,
                "jobs": len(jobs),
            },
        )
        if watch is not None:
            jobs = watch.wait(
                jobs, wait, lambda ids: _store().get_many(tenant_id, ids, vectors=True)
            )
    except PublishFailed as exc:
        job_ids = [str(job.id) for job in exc.jobs]
        log.error("jobs could not be queued", extra={"job_id": job_ids[0]}, exc_info=True)
        raise ApiError(
            503,
            "broker_unavailable",
            "the job queue is unavailable; nothing was queued, try again shortly",
            details=[{"job_id": job_id} for job_id in job_ids],
            headers={"Retry-After": "5"},
        ) from exc
    finally:
        if watch is not None:
            watch.close()
    return jobs, False


def _wait_of(header: SubmitHeader) -> int | None:
    return preferred_wait([header.prefer] if header.prefer else [])


def _submit_headers(wait: int | None, replayed: bool = False) -> dict[str, str]:
    headers = {"Vary": "Prefer"}
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


def _submit_one(new_job: NewJob, header: SubmitHeader) -> tuple[Response, int, dict]:
    wait = _wait_of(header)
    (job,), replayed = _submit([new_job], wait, _idempotency(header))
    headers = _submit_headers(wait, replayed)
    if replayed or is_final(job):
        return _json(_job_out(job), 200, headers)
    headers["Location"] = url_for("jobs.get_job", job_id=str(job.id))
    return _json(_job_out(job), 202, headers)


SUBMIT_RESPONSES = {
    200: FinishedJobOut,
    202: AcceptedJobOut,
    400: ErrorResponse,
    409: ErrorResponse,
    413: ErrorResponse,
    415: ErrorResponse,
    429: ErrorResponse,
    503: ErrorResponse,
}


def _callback_url(url: str | None, field_prefix: str = "") -> str | None:
    """The job's callback_url, once checked; 422 naming the field for an unsafe one."""
    if url is None:
        return None
    try:
        check_callback_url(url, _settings().webhook_allowed_hosts)
    except UnsafeCallbackUrl as exc:
        raise ApiError.invalid(f"{field_prefix}callback_url", str(exc), "unsafe_url") from exc
    return url


def _embed_job(body: EmbedJobIn, field_prefix: str = "") -> NewJob:
    params = body.model_dump(exclude={"type", "callback_url"})
    clean = tenant_redactor()
    params["texts"] = [clean(text) for text in params["texts"]]
    params["metadata"] = redact_metadata(params["metadata"], clean)
    callback_url = _callback_url(body.callback_url, field_prefix)
    return NewJob(JobType.EMBED, params, total=len(body.texts), callback_url=callback_url)


def _summary_params(body: SummaryLengths, field_prefix: str = "") -> dict[str, Any]:
    """The lengths and the method that will run; 422 for t5 when none is configured."""
    try:
        method = choose_method(body.method, _settings().summarizer_model_path is not None)
    except T5NotConfigured as exc:
        raise ApiError.invalid(f"{field_prefix}method", str(exc), "t5_not_configured") from exc
    return {
        "method": method,
        "requested_method": body.method,
        "max_length": body.max_length,
        "min_length": body.min_length,
    }


def _summarize_job(body: SummarizeJobIn, field_prefix: str = "") -> NewJob:
    params = {"text": tenant_redactor()(body.text), **_summary_params(body, field_prefix)}
    callback_url = _callback_url(body.callback_url, field_prefix)
    return NewJob(JobType.SUMMARIZE, params, total=1, callback_url=callback_url)


def _conversation_job(body: ConversationJobIn, field_prefix: str = "") -> NewJob:
    clean = tenant_redactor()
    messages = [message.model_dump() for message in body.messages]
    for message in messages:
        message["content"] = clean(message["content"])
    params = {
        "conversation_id": body.conversation_id,
        "user_id": body.user_id,
        "messages": messages,
        "summarize": body.summarize,
        "embed": body.embed,
        **_summary_params(body, field_prefix),
    }
    return NewJob(
        JobType.CONVERSATION,
        params,
        total=conversation_steps(body.summarize, body.embed),
        callback_url=_callback_url(body.callback_url, field_prefix),
    )


@jobs_api.post("/embed", summary="Submit an embedding job", responses=SUBMIT_RESPONSES)
def submit_embed(body: EmbedJobIn, header: SubmitHeader) -> tuple[Response, int, dict]:
    """Embed up to the configured number of texts with all-MiniLM-L6-v2 (384 dimensions)."""
    return _submit_one(_embed_job(body), header)


@jobs_api.post("/summarize", summary="Submit a summarization job", responses=SUBMIT_RESPONSES)
def submit_summarize(body: SummarizeJobIn, header: SubmitHeader) -> tuple[Response, int, dict]:
    """Summarise a text with T5 or extractively. Lengths are in tokens."""
    return _submit_one(_summarize_job(body), header)


@jobs_api.post(
    "/conversation",
    summary="Submit a conversation job",
    responses=SUBMIT_RESPONSES,
)
def submit_conversation(
    body: ConversationJobIn, header: SubmitHeader
) -> tuple[Response, int, dict]:
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
    return _submit_one(_conversation_job(body), header)


def _batch_job(index: int, item: BatchItem) -> NewJob:
    prefix = f"jobs.{index}."
    if isinstance(item, EmbedBatchItem):
        return _embed_job(item, prefix)
    if isinstance(item, SummarizeBatchItem):
        return _summarize_job(item, prefix)
    return _conversation_job(item, prefix)


def _ownership_errors(items: Sequence[tuple[int, ConversationJobIn]]) -> list[dict[str, Any]]:
    """A conversation job whose user_id differs from its conversation's user, stored or
    given by an earlier job of the batch, in one query."""
    if not items:
        return []
    owners: dict[str, str | None] = ConversationStore(_settings().database_url).users_of(
        current_principal().tenant_id, {item.conversation_id for _, item in items}
    )
    errors = []
    for index, item in items:
        owner = owners.get(item.conversation_id)
        if item.user_id is None:
            continue
        if owner is None:
            owners[item.conversation_id] = item.user_id
        elif owner != item.user_id:
            errors.append(
                {
                    "field": f"jobs.{index}.user_id",
                    "message": f"conversation {item.conversation_id!r} belongs to another user",
                    "type": "conversation_user_mismatch",
                }
            )
    return errors


@jobs_api.post(
    "/batch",
    summary="Submit jobs of any type in one request",
    responses={**SUBMIT_RESPONSES, 200: FinishedBatchOut, 202: AcceptedBatchOut},
)
def submit_batch(body: BatchJobsIn, header: SubmitHeader) -> tuple[Response, int, dict]:
    """Up to 100 jobs, each the body of `POST /v1/jobs/<type>` with its `type`. All are
    checked before any is accepted (422 naming `jobs.<index>.<field>`), then written in
    one transaction and queued in one broker round trip. The jobs come back in order."""
    new_jobs, errors = [], []
    for index, item in enumerate(body.jobs):
        try:
            new_jobs.append(_batch_job(index, item))
        except ApiError as exc:
            errors.extend(exc.details)
    errors += _ownership_errors(
        [(i, item) for i, item in enumerate(body.jobs) if isinstance(item, ConversationBatchItem)]
    )
    if errors:
        errors.sort(key=lambda error: int(error["field"].split(".")[1]))
        raise ApiError(
            422,
            "validation_error",
            "; ".join(f"{error['field']}: {error['message']}" for error in errors),
            details=errors,
        )
    wait = _wait_of(header)
    jobs, replayed = _submit(new_jobs, wait, _idempotency(header))
    all_final = all(is_final(job) for job in jobs)
    out = BatchJobsOut(jobs=[_job_out(job) for job in jobs])
    return _json(out, 200 if replayed or all_final else 202, _submit_headers(wait, replayed))


def _find_job(job_id: uuid.UUID) -> Row:
    try:
        return _store().get(current_principal().tenant_id, job_id)
    except JobNotFound as exc:
        raise ApiError(404, "job_not_found", f"no job with id {str(job_id)!r}") from exc


@jobs_api.get("/<uuid:job_id>", summary="Get a job", responses={200: JobOut, 404: ErrorResponse})
def get_job(path: JobPath, query: JobQuery) -> tuple[Response, int, dict]:
    """The job's status, progress and, once it has succeeded, its result. With `wait`,
    a long poll: the answer comes once the job has ended, or after `wait` seconds."""
    job_id = path.job_id
    if query.wait is None:
        job = _find_job(job_id)
    else:
        tenant_id = current_principal().tenant_id
        with JobWatch(_settings().redis_url, [job_id], kind="poll") as watch:
            (job,) = watch.wait(
                [_find_job(job_id)],
                query.wait,
                lambda ids: _store().get_many(tenant_id, ids, vectors=True),
            )
    return _json(_job_out(job, query.encoding_format), 200, {})


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
    next_link = next_page_link("jobs.list_jobs", query, page.next_cursor)
    body = JobListOut(
        jobs=[JobSummaryOut.from_job(job) for job in page.jobs],
        next_cursor=page.next_cursor,
        links={"next": next_link},
    )
    return jsonify(body.model_dump(mode="json")), 200, {}


@jobs_api.post(
    "/<uuid:job_id>/cancel",
    summary="Cancel a job",
    responses={200: JobOut, 404: ErrorResponse, 409: ErrorResponse},
)
def cancel_job(path: JobPath) -> tuple[Response, int, dict]:
    """Cancel a queued or running job: 200 with the job, now `canceled`. 409 once it has
    ended (succeeded, failed or already canceled), with its status in `details`."""
    principal = current_principal()
    try:
        job = _store().cancel(principal.tenant_id, path.job_id, actor=principal.key_prefix)
    except JobNotFound as exc:
        raise ApiError(404, "job_not_found", f"no job with id {str(path.job_id)!r}") from exc
    except JobAlreadyFinished as exc:
        raise ApiError(
            409,
            "job_finished",
            f"the job has already {exc.job.status.value} and cannot be canceled",
            details=[{"status": exc.job.status.value}],
        ) from exc
    _revoke(str(job.id))
    return _json(_job_out(job), 200, {})


@jobs_api.delete(
    "/<uuid:job_id>",
    summary="Delete a job",
    responses={204: None, 404: ErrorResponse},
)
def delete_job(path: JobPath) -> tuple[str, int]:
    """Delete the job and its result, canceling it first if it is queued or running.
    A later `GET` answers 404. The vectors an embed job with `store` indexed go with
    it, within seconds: search stops finding its texts. What a conversation job
    stored belongs to the conversation and stays: erase it with
    `DELETE /v1/conversations/<id>` or `/v1/users/<id>`."""
    principal = current_principal()
    try:
        job, was_active = _store().delete(
            principal.tenant_id, path.job_id, actor=principal.key_prefix
        )
    except JobNotFound as exc:
        raise ApiError(404, "job_not_found", f"no job with id {str(path.job_id)!r}") from exc
    if was_active:
        _revoke(str(path.job_id))
    if job.type == JobType.EMBED and job.params.get("store"):
        _forget(
            ForgetMessage(tenant_id=job.tenant_id, job_id=job.id, texts=len(job.params["texts"]))
        )
    return "", 204


def _forget(message: ForgetMessage) -> None:
    """Have the cpu pool delete these records from the index. If the broker is away
    the records stay until ``flask --app api check-memory --repair`` removes them."""
    try:
        current_app.extensions["celery"].send_task(
            TaskName.FORGET_RECORDS.value, args=task_args(message), ignore_result=True
        )
    except Exception:
        log.warning("could not send the records to forget", exc_info=True)


def _revoke(task_id: str) -> None:
    """Tell the workers to drop the task. The job row already says canceled, so a
    worker that misses the broadcast still skips the job; failure is only logged."""
    try:
        current_app.extensions["celery"].control.revoke(task_id)
    except Exception:
        log.warning("could not broadcast the revocation", extra={"job_id": task_id}, exc_info=True)
