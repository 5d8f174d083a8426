"""The job lifecycle: every change of a job's status goes through ``JobStore``.

::

    queued ──► running ──► succeeded
       │          │   └──► failed
       └──────────┴──────► canceled

Each transition is one guarded ``UPDATE … WHERE status IN (…)``, so a job that
has finished or been canceled never runs again, even when its task is
delivered a second time, and two deliveries cannot both finish it.
"""

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from config import metrics
from models import ACTIVE_STATUSES, AuditLog, Job, JobStatus, JobType
from models.db import session_scope


class JobNotFound(LookupError):
    """No such job for this tenant (or no such job at all: callers cannot tell)."""


class JobAlreadyFinished(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already {job.status}")
        self.job = job


class InvalidCursor(ValueError):
    pass


class PublishFailed(Exception):
    """The job row was written but its task could not be put on the queue."""

    def __init__(self, job: Job, cause: BaseException) -> None:
        super().__init__(f"could not queue job {job.id}: {cause}")
        self.job = job


@dataclass(frozen=True)
class JobPage:
    jobs: Sequence[Job]
    next_cursor: str | None


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from a URL; anything that is not a UUID is an unknown job."""
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise JobNotFound(raw) from exc


def encode_cursor(job: Job) -> str:
    payload = json.dumps({"t": job.created_at.isoformat(), "id": str(job.id)})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(payload["t"]), uuid.UUID(payload["id"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc


_FINISHED_COLUMNS = (Job.id, Job.type, Job.created_at, Job.finished_at)


def _observe_finished(rows: Sequence[Any], status: JobStatus) -> None:
    # Rows come from the guarded UPDATE that made the transition: each job counts once.
    for row in rows:
        metrics.observe_finished(
            JobType(row.type).value, status.value, row.created_at, row.finished_at
        )


class JobStore:
    """Reads and status transitions of ``jobs`` rows, each in its own transaction."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def _session(self) -> Any:
        return session_scope(self.database_url)

    # -- submission -------------------------------------------------------

    def submit(
        self,
        *,
        tenant_id: uuid.UUID,
        job_type: JobType,
        params: dict[str, Any],
        total: int,
        publish: Callable[[Job], None],
    ) -> Job:
        """Write the job row (``queued``), commit, then publish its task.

        The row is committed first so a worker can never receive a task whose
        row it cannot see. When publishing fails the job is marked failed
        (``broker_unavailable``) and ``PublishFailed`` is raised, so nothing
        is left ``queued`` with no task behind it.
        """
        with self._session() as session:
            job = Job(
                tenant_id=tenant_id,
                type=job_type,
                status=JobStatus.QUEUED,
                params=params,
                progress_total=total,
            )
            session.add(job)
            session.flush()  # INSERT … RETURNING fills in created_at
        metrics.JOBS_SUBMITTED.labels(type=JobType(job_type).value).inc()
        try:
            publish(job)
        except Exception as exc:
            self.fail(job.id, "broker_unavailable", "the job queue could not be reached")
            raise PublishFailed(job, exc) from exc
        return job

    # -- worker-side transitions ------------------------------------------

    def start(self, job_id: uuid.UUID, *, max_attempts: int) -> Job | None:
        """Mark a job running and count the attempt; None if it must not run.

        A job already ``running`` may start again: its worker died and the
        broker delivered the task anew. One that has been delivered more than
        ``max_attempts`` times is failed instead, since it keeps killing its
        worker.
        """
        started = self.start_many([job_id])
        if not started or self.fail_if_over_attempts(started[0], max_attempts):
            return None
        return started[0]

    def fail_if_over_attempts(self, job: Job, max_attempts: int) -> bool:
        """Fail a just-started job delivered more than ``max_attempts`` times; True if so."""
        if job.attempts <= max_attempts:
            return False
        self.fail(
            job.id,
            "too_many_attempts",
            f"the job was started {job.attempts - 1} times without finishing",
        )
        return True

    def start_many(self, job_ids: Sequence[uuid.UUID]) -> list[Job]:
        """Mark many jobs running in one statement (the gpu pool's batches).

        Unlike ``start`` it leaves the attempt limit to the caller, since each
        job's delivery carries its own retry count.
        """
        if not job_ids:
            return []
        with self._session() as session:
            started = list(
                session.scalars(
                    update(Job)
                    .where(Job.id.in_(job_ids), Job.status.in_(ACTIVE_STATUSES))
                    .values(
                        status=JobStatus.RUNNING,
                        attempts=Job.attempts + 1,
                        started_at=func.coalesce(Job.started_at, func.now()),
                    )
                    .returning(Job)
                )
            )
        for job in started:
            if job.attempts == 1:
                wait = (job.started_at - job.created_at).total_seconds()
                metrics.JOB_QUEUE_WAIT.labels(type=JobType(job.type).value).observe(max(0.0, wait))
        return started

    def succeed_many(self, results: dict[uuid.UUID, dict[str, Any]]) -> set[uuid.UUID]:
        """``succeed`` for many jobs in one transaction; the ids that were stored."""
        if not results:
            return set()
        finished = []
        with self._session() as session:
            for job_id, result in results.items():
                row = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                    .values(
                        status=JobStatus.SUCCEEDED,
                        result=result,
                        progress_done=Job.progress_total,
                        finished_at=func.now(),
                    )
                    .returning(*_FINISHED_COLUMNS)
                ).one_or_none()
                if row is not None:
                    finished.append(row)
        _observe_finished(finished, JobStatus.SUCCEEDED)
        return {row.id for row in finished}

    def fail_many(self, job_ids: Sequence[uuid.UUID], code: str, message: str) -> set[uuid.UUID]:
        """``fail`` for many jobs in one statement; the ids that were failed."""
        if not job_ids:
            return set()
        with self._session() as session:
            finished = session.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.status.in_(ACTIVE_STATUSES))
                .values(
                    status=JobStatus.FAILED,
                    error_code=code,
                    error_message=message[:2000],
                    finished_at=func.now(),
                )
                .returning(*_FINISHED_COLUMNS)
            ).all()
        _observe_finished(finished, JobStatus.FAILED)
        return {row.id for row in finished}

    def report_progress(self, job_id: uuid.UUID, done: int, total: int) -> bool:
        """Record progress; False when the job is no longer running (canceled)."""
        with self._session() as session:
            changed = session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                .values(progress_done=done, progress_total=total)
                .returning(Job.id)
            )
        return changed is not None

    def succeed(self, job_id: uuid.UUID, result: dict[str, Any]) -> bool:
        """Store the result of a running job; False if it was canceled meanwhile."""
        return job_id in self.succeed_many({job_id: result})

    def fail(self, job_id: uuid.UUID, code: str, message: str) -> bool:
        """Fail a queued or running job with an error code and message."""
        return job_id in self.fail_many([job_id], code, message)

    # -- caller-side ------------------------------------------------------

    def cancel(self, tenant_id: uuid.UUID, job_id: uuid.UUID, *, actor: str) -> Job:
        """Cancel a queued or running job of this tenant.

        Raises ``JobNotFound`` for an unknown job and ``JobAlreadyFinished``
        once it has succeeded, failed or been canceled.
        """
        with self._session() as session:
            job = session.scalar(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.tenant_id == tenant_id,
                    Job.status.in_(ACTIVE_STATUSES),
                )
                .values(status=JobStatus.CANCELED, finished_at=func.now())
                .returning(Job)
            )
            if job is not None:
                session.add(
                    AuditLog(
                        tenant_id=tenant_id,
                        actor=actor,
                        action="job.cancel",
                        target_type="job",
                        target_id=str(job_id),
                    )
                )
        if job is None:
            raise JobAlreadyFinished(self.get(tenant_id, job_id))
        _observe_finished([job], JobStatus.CANCELED)
        return job

    def running(self, job_id: uuid.UUID) -> Job | None:
        """The job, if it is running (a later step of a job checks before its work)."""
        jobs = self.running_many([job_id])
        return jobs[0] if jobs else None

    def running_many(self, job_ids: Sequence[uuid.UUID]) -> list[Job]:
        """Those of the jobs that are running."""
        with self._session() as session:
            return list(
                session.scalars(
                    select(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.RUNNING)
                )
            )

    def get(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
        with self._session() as session:
            return self._get(session, tenant_id, job_id)

    @staticmethod
    def _get(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
        if job is None:
            raise JobNotFound(str(job_id))
        return job

    def list(
        self,
        tenant_id: uuid.UUID,
        *,
        status: JobStatus | None = None,
        job_type: JobType | None = None,
        cursor: str | None = None,
        limit: int,
    ) -> JobPage:
        """The tenant's jobs, newest first, ``limit`` at a time."""
        conditions: list[ColumnElement[bool]] = [Job.tenant_id == tenant_id]
        if status is not None:
            conditions.append(Job.status == status)
        if job_type is not None:
            conditions.append(Job.type == job_type)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            conditions.append(
                or_(
                    Job.created_at < created_at,
                    and_(Job.created_at == created_at, Job.id < last_id),
                )
            )
        query = (
            select(Job)
            .where(*conditions)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(limit + 1)
        )
        with self._session() as session:
            jobs = list(session.scalars(query))
        has_more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next_cursor=encode_cursor(jobs[-1]) if has_more else None)


class JobCanceled(Exception):
    """Raised inside a running job once its row says it was canceled."""


class ProgressReporter:
    """Writes ``done``/``total`` on the job row; stops the work if it was canceled."""

    def __init__(self, store: JobStore, job_id: uuid.UUID) -> None:
        self.store = store
        self.job_id = job_id

    def __call__(self, done: int, total: int) -> None:
        if not self.store.report_progress(self.job_id, done, total):
            raise JobCanceled(str(self.job_id))
