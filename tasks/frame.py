"""The frame every job task runs its work in: start, guard, settle.

A delivery's jobs are started first (``start``): a job's first step marks it
running and counts the attempt; a later step only goes on with jobs still
running. A finished or canceled job is skipped, so a message delivered twice
does nothing the second time. The work then runs inside ``guard``, which
turns what can go wrong into the job's outcome:

- a transient error (PostgreSQL, Redis or Milvus away) is handed to
  ``on_transient`` (the task is retried with backoff, ``tasks.retry``), and
  the job runs again later; once its retries are spent, ``give_up`` fails it
  with ``dependency_unavailable``;
- the soft time limit fails the jobs with ``time_limit_exceeded``;
- anything else fails them with ``internal_error`` and the exception's text.

Results are stored with ``succeed``, many jobs in one statement.
"""

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Row

from config import RetrySettings, get_settings
from config.logs import log_context
from models import JobErrorCode
from services.jobs import JobStore
from services.notify import changed_notifier, finished_notifier
from services.webhooks import WebhookSender
from tasks.retry import TRANSIENT_ERRORS
from worker.presence import worker_identity

log = logging.getLogger(__name__)


class TimeLimitExceeded(Exception):
    """The work of a job ran past its soft time limit (raised where Celery cannot)."""


class JobFrame:
    """``worker`` is the identity written on the rows this process starts or resumes
    (``worker.presence``): the recovery sweep takes them back when it stops beating."""

    def __init__(
        self,
        store: JobStore,
        *,
        max_attempts: int,
        soft_limit: float,
        worker: str | None = None,
        retry: RetrySettings | None = None,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.soft_limit = soft_limit
        self.worker = worker
        self.retry = retry or RetrySettings()

    @classmethod
    def from_settings(cls) -> "JobFrame":
        settings = get_settings()
        return cls(
            JobStore(
                settings.database_url,
                notify=finished_notifier(settings.redis_url),
                changed=changed_notifier(settings.redis_url),
                deliver=WebhookSender(current_app),
            ),
            max_attempts=settings.max_job_attempts,
            soft_limit=settings.celery.task_soft_time_limit,
            worker=worker_identity(),
            retry=settings.retry,
        )

    def start(self, deliveries: Mapping[uuid.UUID, int]) -> dict[uuid.UUID, Row]:
        """A job's first step: the rows of the jobs that may run, from ``{job id:
        retries of its delivery}``, now running with their attempt counted.

        A retry after a transient error is a new delivery of the same job;
        only deliveries beyond the retries count against the attempt limit.
        """
        rows = self.store.start_many(
            {job_id: self.max_attempts + retries for job_id, retries in deliveries.items()},
            worker=self.worker,
        )
        return self._log_skipped(deliveries, rows, started=True)

    def resume(
        self,
        job_ids: Iterable[uuid.UUID],
        *,
        done: int | None = None,
        steps_left: int | None = None,
    ) -> dict[uuid.UUID, Row]:
        """A later step: the rows of the jobs still running (``JobStore.resume_many``)."""
        job_ids = list(job_ids)
        rows = self.store.resume_many(job_ids, done=done, steps_left=steps_left, worker=self.worker)
        return self._log_skipped(job_ids, rows, started=False)

    @staticmethod
    def _log_skipped(
        job_ids: Iterable[uuid.UUID], rows: Iterable[Row], *, started: bool
    ) -> dict[uuid.UUID, Row]:
        found = {row.id: row for row in rows}
        for job_id in job_ids:
            job = found.get(job_id)
            with log_context(job_id=str(job_id), tenant=str(job.tenant_id) if job else None):
                if job is None:
                    log.info("job is not runnable; delivery skipped")
                elif started:
                    log.info("job started", extra={"attempt": job.attempts, "job_type": job.type})
        return found

    @contextmanager
    def guard(
        self,
        job_ids: Iterable[uuid.UUID],
        on_transient: Callable[[Exception], None] | None = None,
    ) -> Iterator[None]:
        """Settle the jobs by what the work raises; re-raise a transient error unless
        ``on_transient`` takes it."""
        job_ids = list(job_ids)
        try:
            yield
        except TRANSIENT_ERRORS as exc:
            if on_transient is None:
                raise
            log.warning("transient failure; the job will be retried", exc_info=True)
            on_transient(exc)
        except (SoftTimeLimitExceeded, TimeLimitExceeded):
            log.warning("job stopped at its soft time limit")
            self.fail(
                job_ids,
                JobErrorCode.TIME_LIMIT_EXCEEDED,
                f"the job ran past its time limit of {self.soft_limit:g}s",
            )
        except Exception as exc:
            log.exception("job failed")
            self.fail(job_ids, JobErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def release(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Leave jobs whose next message could not be published to the recovery sweep."""
        for job_id in self.store.release_many(job_ids):
            with log_context(job_id=str(job_id)):
                log.warning("job could not be queued again; left for recovery")

    def fail(self, job_ids: Iterable[uuid.UUID], code: JobErrorCode, message: str) -> None:
        for job_id in self.store.fail_many(job_ids, code, message):
            with log_context(job_id=str(job_id)):
                log.warning("job failed", extra={"code": code.value})

    def give_up(self, job_ids: Iterable[uuid.UUID], exc: Exception) -> bool:
        """Fail the jobs with ``dependency_unavailable``: their retries are spent.

        False when that cannot be recorded either (PostgreSQL is what is away):
        the caller then keeps the jobs' messages going, and their rows, still
        queued or running, stay the truth.
        """
        message = (
            f"a service stayed unavailable through {self.retry.max_retries} retries: "
            f"{type(exc).__name__}: {exc}"
        )
        try:
            self.fail(job_ids, JobErrorCode.DEPENDENCY_UNAVAILABLE, message[:1000])
        except TRANSIENT_ERRORS:
            log.warning("could not fail jobs whose retries are spent", exc_info=True)
            return False
        return True

    def stop_at_hard_limit(self, job_ids: Iterable[uuid.UUID], seconds: float) -> None:
        """Fail the jobs of work killed at the hard time limit (it never returns)."""
        self.fail(
            job_ids,
            JobErrorCode.TIME_LIMIT_EXCEEDED,
            f"the job was stopped at its time limit of {seconds:g}s",
        )

    def succeed(
        self,
        results: Mapping[uuid.UUID, dict[str, Any]],
        vectors: Mapping[uuid.UUID, bytes | None] | None = None,
    ) -> set[uuid.UUID]:
        """Store the results; the jobs that were still running (not canceled) are logged."""
        stored = self.store.succeed_many(results, vectors)
        for job_id in results:
            with log_context(job_id=str(job_id)):
                if job_id in stored:
                    log.info("job succeeded")
                else:
                    log.info("job was canceled before its result was stored")
        return stored
