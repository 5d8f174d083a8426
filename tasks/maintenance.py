"""Periodic housekeeping (cpu queue, sent by Celery beat: ``worker.schedule``)."""

import logging
import time

from celery import shared_task

from config import get_settings
from services import retention, webhooks
from services.idempotency import purge_expired_idempotency_keys
from vectorstore import get_memory_store
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

# Finished jobs whose webhook is sent again per run, at most.
RESEND_BATCH = 500
# A retention run takes no new batch past this share of the soft time limit: a
# batch (a few hundred rows and one Milvus delete) ends well within the rest.
RETENTION_SHARE_OF_TIME_LIMIT = 0.8


@shared_task(
    name=TaskName.RESEND_WEBHOOKS.value,
    queue=TASK_QUEUES[TaskName.RESEND_WEBHOOKS].value,
    ignore_result=True,
)
def resend_webhooks() -> None:
    """Send again the deliveries of finished jobs whose webhook went quiet: longer than
    the longest backoff and two timeouts without an attempt."""
    settings = get_settings()
    quiet_for = settings.webhook_backoff_max_seconds + 2 * settings.webhook_timeout_seconds
    stalled = webhooks.stalled_deliveries(
        settings.database_url, quiet_for=quiet_for, limit=RESEND_BATCH
    )
    if stalled:
        log.warning("webhook deliveries sent again", extra={"jobs": len(stalled)})
        webhooks.WebhookSender(resend_webhooks.app)(stalled)


@shared_task(
    name=TaskName.PURGE_IDEMPOTENCY_KEYS.value,
    queue=TASK_QUEUES[TaskName.PURGE_IDEMPOTENCY_KEYS].value,
    ignore_result=True,
)
def purge_idempotency_keys() -> None:
    """Delete the Idempotency-Keys past their expiry."""
    purged = purge_expired_idempotency_keys(get_settings().database_url)
    if purged:
        log.info("expired idempotency keys purged", extra={"keys": purged})


@shared_task(
    name=TaskName.PURGE_RETENTION.value,
    queue=TASK_QUEUES[TaskName.PURGE_RETENTION].value,
    ignore_result=True,
)
def purge_retention() -> None:
    """Purge each tenant's data older than its retention limit (services/retention.py).
    A run that meets its deadline stops between batches; the next run goes on."""
    settings = get_settings()
    seconds = settings.celery.task_soft_time_limit * RETENTION_SHARE_OF_TIME_LIMIT
    purged = retention.purge_expired(
        settings.database_url,
        get_memory_store(settings),
        default_days=settings.retention_days,
        deadline=time.monotonic() + seconds,
    )
    unfinished = sum(not result.complete for result in purged.values())
    if unfinished:
        log.warning("retention run stopped at its deadline", extra={"tenants": unfinished})
