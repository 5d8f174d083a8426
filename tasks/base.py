"""The project's task decorator, and what every job task retries on.

Tasks take one typed message (``worker.messages``), ignore their Celery
result (the job row is the result) and go to the queue ``worker.queues``
names for them.
"""

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.worker.request import Request

from tasks.frame import TRANSIENT_ERRORS, JobFrame
from worker.messages import MalformedMessage, job_ids_of, read_message
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}


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

    It is bound, retried with backoff on transient errors, and fails its jobs
    when the prefork pool kills it at the hard time limit.
    """
    return shared_task(
        name=name.value,
        queue=TASK_QUEUES[name].value,
        bind=True,
        ignore_result=True,
        Request=JobRequest,
        **RETRY_OPTIONS,
        **options,
    )
