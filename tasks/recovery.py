"""The periodic recovery task (cpu queue, sent by Celery beat: ``worker.schedule``)."""

import logging
from functools import cache

import redis
from celery import Task, shared_task

from config import get_settings
from services.jobs import JobStore
from services.notify import changed_notifier
from services.recovery import recover
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

# Seconds the broker may take over a run's reads (a long queue is scanned in Redis).
BROKER_TIMEOUT = 10.0


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=2)


@shared_task(
    name=TaskName.RECOVER_JOBS.value,
    queue=TASK_QUEUES[TaskName.RECOVER_JOBS].value,
    bind=True,
    ignore_result=True,
)
def recover_jobs(task: Task) -> None:
    """Publish again the jobs a dead worker held and those whose message was lost."""
    settings = get_settings()
    store = JobStore(settings.database_url, changed=changed_notifier(settings.redis_url))
    done = recover(store, task.app, _client(settings.redis_url), settings)
    if done.put_back or done.republished:
        log.warning(
            "jobs recovered",
            extra={"put_back": done.put_back, "republished": done.republished},
        )
