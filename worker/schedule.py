"""Celery beat's schedule: the one place periodic tasks are declared.

Run it with ``celery --app worker.celery_app:celery_app beat --schedule FILE``
(one beat process per deployment). Every entry expires before its next run,
so runs that wait behind a backlog, or while no worker consumes, never pile up;
and it runs ahead of the jobs on its queue (priority 0, jobs run at 6).
"""

from typing import Any

from config import Settings
from worker.queues import TaskName

# Redis serves priority 0 first.
SCHEDULED_PRIORITY = 0
# Housekeeping that may wait: stalled webhooks, expired idempotency keys (and
# expired data: settings.retention_interval_seconds).
RESEND_WEBHOOKS_EVERY = 60.0
PURGE_IDEMPOTENCY_KEYS_EVERY = 3600.0
# Erasures whose message was lost, or whose retries ran out, are sent again.
RESEND_ERASURES_EVERY = 30.0


def _entry(task: TaskName, every: float) -> dict[str, Any]:
    return {
        "task": task.value,
        "schedule": every,
        "options": {"expires": every * 0.9, "priority": SCHEDULED_PRIORITY},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for these settings."""
    return {
        "recover-jobs": _entry(TaskName.RECOVER_JOBS, settings.recovery_interval_seconds),
        "resend-webhooks": _entry(TaskName.RESEND_WEBHOOKS, RESEND_WEBHOOKS_EVERY),
        "purge-idempotency-keys": _entry(
            TaskName.PURGE_IDEMPOTENCY_KEYS, PURGE_IDEMPOTENCY_KEYS_EVERY
        ),
        "purge-retention": _entry(TaskName.PURGE_RETENTION, settings.retention_interval_seconds),
        "resend-erasures": _entry(TaskName.RESEND_ERASURES, RESEND_ERASURES_EVERY),
    }
