"""Periodic housekeeping (cpu queue, sent by Celery beat: ``worker.schedule``)."""

import logging

from celery import shared_task

from config import get_settings
from services import webhooks
from services.idempotency import purge_expired_idempotency_keys
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

# Finished jobs whose webhook is sent again per run, at most.
RESEND_BATCH = 500


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
