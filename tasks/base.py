"""The project's task decorators and the frame every job task runs in."""

import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy.exc import InterfaceError, OperationalError

from config import get_settings
from config.logs import log_context
from models import Job
from services.jobs import JobCanceled, JobStore, ProgressReporter
from worker.queues import TASK_QUEUES, TaskName
from worker.timelimits import time_limits

log = logging.getLogger(__name__)

# Failures that go away on their own (a database restart, a dropped connection):
# the task is retried with backoff until they do, so the job still finishes.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)

JobWork = Callable[[Job, ProgressReporter], dict[str, Any]]


HardTimeoutHandler = Callable[[tuple[Any, ...], float], None]


def convoq_task(
    name: TaskName, *, on_hard_timeout: HardTimeoutHandler | None = None, **options: Any
) -> Callable[[Callable[..., Any]], Task]:
    """Declare a task under its explicit name, on the queue ``worker.queues`` gives it.

    Tasks are bound, ignore their Celery result (state lives in PostgreSQL)
    and run within their time limits even in a pool where Celery cannot
    enforce them; ``on_hard_timeout(args, seconds)`` runs before such a pool's
    process is ended at the hard limit.
    """

    def decorator(fn: Callable[..., Any]) -> Task:
        def run(task: Task, *args: Any, **kwargs: Any) -> Any:
            hard = task.time_limit or task.app.conf.task_time_limit
            with time_limits(
                task.soft_time_limit or task.app.conf.task_soft_time_limit,
                hard,
                on_hard_timeout=partial(on_hard_timeout or _ignore, args, hard),
            ):
                return fn(task, *args, **kwargs)

        run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        run.__module__ = fn.__module__
        return shared_task(
            name=name.value,
            queue=TASK_QUEUES[name].value,
            bind=True,
            ignore_result=True,
            **options,
        )(run)

    return decorator


def _ignore(args: tuple[Any, ...], seconds: float) -> None:
    pass


class JobRequest(Request):
    """Fails the job when the prefork pool kills its task at the hard time limit."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            fail_timed_out_job(tuple(self.args), timeout)


def job_ids_in(args: tuple[Any, ...]) -> list[uuid.UUID]:
    """The jobs a task works for: its first argument, the pipeline state it was
    handed, or the ``{job id: result}`` it indexes."""
    first = args[0]
    if isinstance(first, dict) and "state" in first:
        return [uuid.UUID(str(first["state"]["job_id"]))]
    if isinstance(first, dict):
        return [uuid.UUID(job_id) for job_id in first]
    return [uuid.UUID(str(first))]


def fail_timed_out_job(args: tuple[Any, ...], timeout: float) -> None:
    JobStore(get_settings().database_url).fail_many(
        job_ids_in(args),
        "time_limit_exceeded",
        f"the job was stopped at its time limit of {timeout:g}s",
    )


def job_task(name: TaskName, **options: Any) -> Callable[[JobWork], Task]:
    """Declare the task that runs one kind of job, given the work as a plain function.

    The task takes the job id. It starts the job (guarded: a finished or
    canceled job is skipped), runs ``work(job, progress)`` and stores its
    result, or fails the job with an error code and message.
    """

    def decorator(work: JobWork) -> Task:
        def run(task: Task, job_id: str) -> None:
            run_job(task, uuid.UUID(job_id), work)

        run.__name__, run.__qualname__, run.__doc__ = work.__name__, work.__qualname__, work.__doc__
        run.__module__ = work.__module__
        return convoq_task(
            name,
            on_hard_timeout=fail_timed_out_job,
            Request=JobRequest,
            autoretry_for=TRANSIENT_ERRORS,
            retry_backoff=2,
            retry_backoff_max=60,
            retry_jitter=True,
            max_retries=None,
            **options,
        )(run)

    return decorator


def run_job(task: Task, job_id: uuid.UUID, work: JobWork) -> None:
    settings = get_settings()
    store = JobStore(settings.database_url)
    # A retry after a transient error is a new delivery of the same job; only
    # deliveries beyond the retries count against the attempt limit.
    job = store.start(job_id, max_attempts=settings.max_job_attempts + task.request.retries)
    if job is None:
        log.info("job is not runnable; delivery skipped", extra={"job_id": str(job_id)})
        return
    with log_context(job_id=str(job.id), tenant=str(job.tenant_id)):
        log.info("job started", extra={"attempt": job.attempts, "job_type": job.type.value})
        try:
            result = work(job, ProgressReporter(store, job.id))
        except JobCanceled:
            log.info("job canceled while running")
            return
        except SoftTimeLimitExceeded:
            limit = task.soft_time_limit or task.app.conf.task_soft_time_limit
            store.fail(
                job.id, "time_limit_exceeded", f"the job ran past its time limit of {limit}s"
            )
            log.warning("job stopped at its soft time limit")
            return
        except TRANSIENT_ERRORS:
            log.warning("transient failure; the job will be retried", exc_info=True)
            raise
        except Exception as exc:
            log.exception("job failed")
            store.fail(job.id, "internal_error", f"{type(exc).__name__}: {exc}")
            return
        if store.succeed(job.id, result):
            log.info("job succeeded")
        else:
            log.info("job was canceled before its result was stored")
