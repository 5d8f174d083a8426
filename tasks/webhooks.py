"""Webhook deliveries (cpu queue): one signed POST per attempt, retried with backoff."""

import logging
import uuid

from celery import Task

from api.schemas import JobOut
from config import get_settings
from config.logs import log_context
from services import webhooks
from services.jobs import JobStore
from tasks.base import job_task
from worker.messages import WebhookMessage, read_message
from worker.queues import TaskName

log = logging.getLogger(__name__)


# One POST within its timeout (10 s by default) and two row writes; the limits
# only catch a receiver that trickles its answer.
@job_task(TaskName.DELIVER_WEBHOOK, soft_time_limit=60, time_limit=90)
def deliver(task: Task, message: dict) -> None:
    webhook = read_message([message])
    assert isinstance(webhook, WebhookMessage)
    with log_context(job_id=str(webhook.job_id)):
        retry_in = deliver_once(webhook.job_id)
    if retry_in is not None:
        raise task.retry(countdown=retry_in, max_retries=None)


def deliver_once(job_id: uuid.UUID) -> float | None:
    """Make the job's next attempt and record it; seconds until the one after it, or
    None when there is none (delivered, out of attempts, or nothing to deliver)."""
    settings = get_settings()
    job = JobStore(settings.database_url).get_any(job_id)
    if job is None or job.callback_url is None or job.webhook_status in ("delivered", "failed"):
        return None
    made = len(job.webhook_attempts or [])
    encoding_format = job.params.get("encoding_format") or "float"
    body = webhooks.payload(JobOut.from_job(job, encoding_format).model_dump(mode="json"))
    attempt = webhooks.post_once(
        job.callback_url,
        webhooks.tenant_secret(settings.database_url, job.tenant_id),
        job.id,
        body,
        number=made + 1,
        allowed_hosts=settings.webhook_allowed_hosts,
        timeout=settings.webhook_timeout_seconds,
    )
    last = attempt.number >= settings.webhook_max_attempts or attempt.refused
    status = "delivered" if attempt.delivered else "failed" if last else "retrying"
    webhooks.record_attempt(settings.database_url, job.id, attempt, status)
    log.info(
        "webhook attempt",
        extra={"attempt": attempt.number, "status_code": attempt.status_code, "status": status},
    )
    if status != "retrying":
        return None
    return webhooks.backoff_seconds(
        attempt.number, settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds
    )
