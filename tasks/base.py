"""The project's task decorator, and how a job task retries.

Tasks take one typed message (``worker.messages``), ignore their Celery
result (the job row is the result) and go to the queue ``worker.queues``
names for them.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.worker.request import Request

from config import get_settings
from tasks.frame import JobFrame
from tasks.retry import TRANSIENT_ERRORS, backoff_delay
from worker.messages import MalformedMessage, job_ids_of, read_message
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)


def retry_or_give_up(task: Task, message: dict, exc: Exception) -> None:
    """After a transient error: send the task again after a backoff (``Task.retry``,
    which raises), or, once its retries are spent, fail its jobs with
    ``dependency_unavailable``. When even that cannot be recorded (PostgreSQL is
    what is away) the task is sent again after the longest backoff, so the job
    is never left without a message while its row says it is underway.

    Celery's ``autoretry_for`` would retry, but not fail the job at the end;
    its ``retry_jitter`` also draws the whole delay at random, so the total
    wait would have no lower bound.
    """
    policy = get_settings().retry
    retries = task.request.retries
    delay = backoff_delay(retries, policy)
    if delay is None:
        if JobFrame.from_settings().give_up(job_ids_of(read_message([message])), exc):
            return
        delay = policy.backoff_max
    log.warning(
        "transient failure; the job will be retried",
        extra={"retry": retries + 1, "delay": round(delay, 2), "error": str(exc)[:500]},
    )
    raise task.retry(exc=exc, countdown=delay)


def fail_timed_out_jobs(args: Any, seconds: float) -> None:
    """The jobs of a task killed at its hard time limit fail with a clear error."""
    try:
        job_ids = job_ids_of(read_message(args))
    except MalformedMessage:
        return
    JobFrame.from_settings().stop_at_hard_limit(job_ids, seconds)


class JobRequest(Request):
    """Fails the job when the prefork pool kills its task at the hard time limit."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            fail_timed_out_jobs(self.args, timeout)


def job_task(name: TaskName, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Declare a cpu task of a job under its explicit name, on its queue.

    It is bound, retried with a bounded backoff on transient errors
    (``retry_or_give_up``), and fails its jobs when the prefork pool kills it
    at the hard time limit.
    """

    def decorator(work: Callable[[Task, dict], None]) -> Task:
        @functools.wraps(work)
        def run(task: Task, message: dict) -> None:
            try:
                work(task, message)
            except TRANSIENT_ERRORS as exc:
                retry_or_give_up(task, message, exc)

        return shared_task(
            name=name.value,
            queue=TASK_QUEUES[name].value,
            bind=True,
            ignore_result=True,
            Request=JobRequest,
            # The bound is ours (RetrySettings), not Celery's default of 3.
            max_retries=None,
            **options,
        )(run)

    return decorator
