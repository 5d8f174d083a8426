"""The jobs behind the requests of a batch: started together, failed together."""

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from celery import Task, states
from celery.exceptions import SoftTimeLimitExceeded
from celery_batches import SimpleRequest

from config import get_settings
from config.logs import log_context
from models import Job
from services.jobs import JobStore
from tasks.base import TRANSIENT_ERRORS
from tasks.batch import BatchWork, batch_task, requeue, retries_of
from worker.queues import TaskName

log = logging.getLogger(__name__)

T = TypeVar("T")


def job_id_of(request: SimpleRequest) -> uuid.UUID | None:
    """The job a batched request works for, if any (a search query has none)."""
    spec: dict[str, Any] = request.args[0] if request.args else {}
    raw = spec.get("job_id") or (spec.get("state") or {}).get("job_id")
    return uuid.UUID(str(raw)) if raw else None


class JobsInBatch:
    def __init__(self, store: JobStore, max_attempts: int) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self._jobs: dict[str, Job] = {}

    @classmethod
    def from_settings(cls) -> "JobsInBatch":
        settings = get_settings()
        return cls(JobStore(settings.database_url), settings.max_job_attempts)

    def start(self, requests: Sequence[SimpleRequest], *, kind: str) -> list[SimpleRequest]:
        """Start the jobs of the requests of ``kind``; the requests whose job may run.

        As ``tasks.base.run_job`` does for one job: a finished or canceled job
        is skipped, and one started too often fails.
        """
        mine = [r for r in requests if r.args and r.args[0].get("kind") == kind]
        by_job = {job_id_of(r): r for r in mine}
        started = {job.id: job for job in self.store.start_many(list(by_job))}
        runnable = []
        for job_id, request in by_job.items():
            job = started.get(job_id)
            with log_context(job_id=str(job_id), tenant=str(job.tenant_id) if job else None):
                if job is None:
                    log.info("job is not runnable; delivery skipped")
                    continue
                if self.store.fail_if_over_attempts(job, self.max_attempts + retries_of(request)):
                    continue
                log.info("job started", extra={"attempt": job.attempts, "job_type": job.type.value})
            self._jobs[request.id] = job
            runnable.append(request)
        return runnable

    def has(self, request: SimpleRequest) -> bool:
        return request.id in self._jobs

    def job_of(self, request: SimpleRequest) -> Job:
        return self._jobs[request.id]

    def still_running(self, job_id: uuid.UUID, done: int, total: int) -> bool:
        """For a later step of a job: record its progress; False once it was canceled."""
        if self.store.report_progress(job_id, done, total):
            return True
        with log_context(job_id=str(job_id)):
            log.info("job canceled while running")
        return False

    def progress_callback(self, request_id: str, done: int, total: int) -> bool:
        """``services.embedding`` progress: False once the job was canceled."""
        job = self._jobs.get(request_id)
        if job is None:
            return True
        if self.store.report_progress(job.id, done, total):
            return True
        with log_context(job_id=str(job.id), tenant=str(job.tenant_id)):
            log.info("job canceled while running")
        return False

    def fail_requests(self, requests: Sequence[SimpleRequest], code: str, message: str) -> None:
        job_ids = [job_id for r in requests if (job_id := job_id_of(r)) is not None]
        self.store.fail_many(job_ids, code, message)
        for job_id in job_ids:
            with log_context(job_id=str(job_id)):
                log.warning("job failed", extra={"code": code})


def job_batch_task(name: TaskName, *, flush_every: int) -> Callable[[BatchWork], Task]:
    """A batched task of the gpu pool whose requests (mostly) work for jobs."""
    return batch_task(
        name,
        flush_every=flush_every,
        flush_interval=get_settings().batch_flush_interval,
        on_hard_timeout=fail_jobs_of_requests,
        on_give_up=give_up_on_requests,
    )


def fail_jobs_of_requests(requests: Sequence[SimpleRequest], seconds: float) -> None:
    """At a batch's hard time limit, before the process ends."""
    JobsInBatch(JobStore(get_settings().database_url), 0).fail_requests(
        requests, "time_limit_exceeded", f"the job was stopped at its time limit of {seconds:g}s"
    )


def give_up_on_requests(requests: Sequence[SimpleRequest]) -> None:
    """When a batch kept failing in an unforeseen way: fail the jobs, not loop for ever."""
    JobsInBatch(JobStore(get_settings().database_url), 0).fail_requests(
        requests, "internal_error", "the job failed repeatedly on the gpu worker"
    )


def run_guarded(
    task: Task, jobs: JobsInBatch, requests: Sequence[SimpleRequest], work: Callable[[], T]
) -> T | None:
    """Run the part of a batch that reads its jobs and runs the model; None if it failed.

    A transient failure (the database away) puts every request back on the
    queue with a backoff; the soft time limit or any other error fails the
    batch's jobs, and answers its search queries with the error.
    """
    try:
        return work()
    except TRANSIENT_ERRORS:
        log.warning("transient failure; the job will be retried", exc_info=True)
        for request in requests:
            requeue(task.app, request)
        return None
    except SoftTimeLimitExceeded:
        limit = task.app.conf.task_soft_time_limit
        code, message = "time_limit_exceeded", f"the job ran past its time limit of {limit}s"
    except Exception as exc:
        log.exception("batch failed")
        code, message = "internal_error", f"{type(exc).__name__}: {exc}"
    jobs.fail_requests(requests, code, message)
    for request in requests:
        if request.args[0].get("kind") == "query":
            task.app.backend.store_result(request.id, RuntimeError(message), states.FAILURE)
    return None


def store_results(
    task: Task,
    jobs: JobsInBatch,
    requests: Sequence[SimpleRequest],
    results: dict[uuid.UUID, dict[str, Any]],
) -> None:
    """Mark the jobs succeeded with their results; queued again if the database is away."""
    if not results:
        return
    try:
        for job_id in jobs.store.succeed_many(results):
            with log_context(job_id=str(job_id)):
                log.info("job succeeded")
    except TRANSIENT_ERRORS:
        log.warning("transient failure; the job will be retried", exc_info=True)
        for request in requests:
            if jobs.has(request) and jobs.job_of(request).id in results:
                requeue(task.app, request)
