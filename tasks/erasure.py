"""Erasures (cpu queue): ``erase`` carries one out (``services.erasure.run``), and
``resend_erasures``, run by Celery beat, sends again those no run has taken up."""

import logging
import uuid
from collections.abc import Callable
from contextlib import suppress
from functools import cache

import redis
from celery import Celery, Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from config import Settings, get_settings
from services import erasure
from services.jobs import JobStore
from services.notify import finished_notifier
from tasks.retry import TRANSIENT_ERRORS, backoff_delay
from vectorstore import get_memory_store
from worker.messages import ErasureMessage, MalformedMessage, read_message
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

# What makes a run worth trying again: a store away, or the target not yet gone.
RETRYABLE = (*TRANSIENT_ERRORS, erasure.ErasureNotDone)
# Seconds the broker may take over the scan for live messages of canceled jobs.
BROKER_TIMEOUT = 10.0
# Erasures sent again per sweep, at most.
RESEND_BATCH = 500


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=2)


def _revoker(app: Celery) -> Callable[[list[str]], None]:
    def revoke(task_ids: list[str]) -> None:
        # The rows are gone, so a worker that misses this skips the jobs anyway.
        try:
            app.control.revoke(task_ids)
        except Exception:
            log.warning("could not broadcast the revocations", exc_info=True)

    return revoke


def stores_for(settings: Settings, app: Celery) -> erasure.Stores:
    client = _client(settings.redis_url)
    return erasure.Stores(
        database_url=settings.database_url,
        memory=get_memory_store(settings),
        redis=client,
        redis_url=settings.redis_url,
        jobs=JobStore(settings.database_url, notify=finished_notifier(settings.redis_url)),
        still_underway=erasure.broker_underway(client, settings.worker_heartbeat_seconds),
        revoke=_revoker(app),
    )


# A run is a few statements per store, whatever the amount of data; the
# limits are those of every task, room for a user with millions of rows.
@shared_task(
    name=TaskName.ERASE.value,
    queue=TASK_QUEUES[TaskName.ERASE].value,
    bind=True,
    ignore_result=True,
    max_retries=None,
)
def erase(task: Task, message: dict) -> None:
    """Carry out the erasure; retried with backoff until every store has confirmed."""
    try:
        request = read_message([message])
    except MalformedMessage:
        log.error("erasure message dropped: not one of ours", exc_info=True)
        return
    assert isinstance(request, ErasureMessage)
    settings = get_settings()
    erasure_id = request.erasure_id
    extra = {"erasure_id": str(erasure_id)}
    try:
        done = erasure.run(stores_for(settings, task.app), erasure_id)
    except RETRYABLE as exc:
        _retry_or_leave(task, settings, erasure_id, exc)
    except SoftTimeLimitExceeded as exc:
        log.warning("erasure stopped at its soft time limit; left for the sweep", extra=extra)
        _leave(settings, erasure_id, exc)
    except Exception as exc:
        log.exception("erasure failed", extra=extra)
        erasure.fail(settings.database_url, erasure_id, exc)
    else:
        if done is not None:
            log.info("erasure succeeded", extra={**extra, "removed": done.removed})


def _retry_or_leave(task: Task, settings: Settings, erasure_id: uuid.UUID, exc: Exception) -> None:
    """Run again after a backoff (``Task.retry`` raises); once the retries are spent,
    the erasure waits as ``pending`` for ``resend_erasures``."""
    delay = backoff_delay(task.request.retries, settings.retry)
    extra = {"erasure_id": str(erasure_id), "error": erasure.describe(exc)}
    if delay is None:
        log.warning("erasure retries spent; left for the sweep", extra=extra)
        _leave(settings, erasure_id, exc)
        return
    log.info("erasure not done yet; retried", extra={**extra, "delay": round(delay, 2)})
    # When PostgreSQL is what is away, the note is skipped: the retry finds it back.
    with suppress(*TRANSIENT_ERRORS):
        erasure.note_retry(settings.database_url, erasure_id, exc)
    raise task.retry(exc=exc, countdown=delay)


def _leave(settings: Settings, erasure_id: uuid.UUID, exc: BaseException) -> None:
    try:
        erasure.leave_for_sweep(settings.database_url, erasure_id, exc)
    except TRANSIENT_ERRORS:
        # Still running on its row: the sweep sends it once its claim is old.
        log.warning("could not leave the erasure for the sweep", exc_info=True)


@shared_task(
    name=TaskName.RESEND_ERASURES.value,
    queue=TASK_QUEUES[TaskName.RESEND_ERASURES].value,
    ignore_result=True,
)
def resend_erasures() -> None:
    """Send again the unfinished erasures no run has taken up for a while."""
    settings = get_settings()
    stalled = erasure.stalled_erasures(
        settings.database_url, quiet_for=settings.erasure_resend_after_seconds, limit=RESEND_BATCH
    )
    if stalled:
        log.warning("erasures sent again", extra={"erasures": len(stalled)})
        erasure.send(resend_erasures.app, stalled)
