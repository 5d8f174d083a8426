"""The job lifecycle: every change of a job's status goes through ``JobStore``.

::

    queued ──► running ──► succeeded
       │          │   └──► failed
       └──────────┴──────► canceled

Each transition is one guarded ``UPDATE … WHERE status IN (…)``, so a job that
has finished or been canceled never runs again, even when its task is
delivered a second time, and two deliveries cannot both finish it.

Every method takes many jobs at once where workers need it, in one statement:
a batch of N jobs costs the same number of round trips as one job. Rows come
back as SQLAlchemy ``Row`` objects with the ``jobs`` columns as attributes.
Once a job reaches a final status, ``notify`` is told its row (after the
commit): that is what wakes requests waiting for it; ``deliver`` is told the
rows that have a ``callback_url`` (their webhooks). Jobs that start or make
progress are told to ``changed`` (their ids), for the event streams.
"""

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Row,
    String,
    Uuid,
    all_,
    and_,
    any_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from config import metrics
from models import ACTIVE_STATUSES, AuditLog, Job, JobErrorCode, JobStatus, JobType
from models.db import transaction
from services import idempotency as idempotency_keys
from services.idempotency import IdempotencyKey
from services.notify import MAX_CARRIED_ROW_BYTES

JOBS = Job.__table__
# Which worker holds a job, and since when: the recovery sweep's bookkeeping.
_CLAIM_COLUMNS = ("worker", "claimed_at")
# Everything but the vectors, which only readers of results need.
SUMMARY_COLUMNS = tuple(column for column in JOBS.c if column.name != "vectors")
# What a change to a final status returns: everything but the parameters and the
# claim, for the metrics and for the announcement that carries the row to its waiters.
_FINISHED_COLUMNS = tuple(
    column for column in JOBS.c if column.name not in ("params", *_CLAIM_COLUMNS)
)
# What the recovery sweep reads to publish a job again.
_RECOVERY_COLUMNS = tuple(
    JOBS.c[name] for name in ("id", "type", "status", "params", "progress_done", "progress_total")
) + tuple(JOBS.c[name] for name in _CLAIM_COLUMNS)

# Told the rows of the jobs that reached a final status (``services.notify``).
Notify = Callable[[Sequence[Row]], None]
# Told the ids of jobs that started or made progress.
NotifyChanged = Callable[[Sequence[uuid.UUID]], None]


class JobNotFound(LookupError):
    """No such job for this tenant (or no such job at all: callers cannot tell)."""


class JobAlreadyFinished(Exception):
    def __init__(self, job: Row) -> None:
        super().__init__(f"job {job.id} already {job.status}")
        self.job = job


class InvalidCursor(ValueError):
    pass


class PublishFailed(Exception):
    """The job rows were written but their tasks could not be put on the queue."""

    def __init__(self, jobs: Sequence[Row], cause: BaseException) -> None:
        super().__init__(f"could not queue {len(jobs)} job(s): {cause}")
        self.jobs = list(jobs)


@dataclass(frozen=True)
class NewJob:
    """A job to submit: its type, its parameters and how many units of work it has."""

    type: JobType
    params: dict[str, Any]
    total: int
    callback_url: str | None = None


@dataclass(frozen=True)
class JobPage:
    jobs: Sequence[Row]
    next_cursor: str | None


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from a URL; anything that is not a UUID is an unknown job."""
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise JobNotFound(raw) from exc


def encode_cursor(job: Row) -> str:
    payload = json.dumps({"t": job.created_at.isoformat(), "id": str(job.id)})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(payload["t"]), uuid.UUID(payload["id"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc


def _ids(job_ids: Iterable[uuid.UUID]) -> Any:
    """``id = ANY(:ids)``: one array parameter, so the statement is the same for any
    number of jobs (``IN`` is compiled anew for each length)."""
    return JOBS.c.id == any_(bindparam("ids", list(job_ids), type_=ARRAY(Uuid)))


def _active() -> Any:
    return or_(*(JOBS.c.status == status.value for status in ACTIVE_STATUSES))


def _seconds_ago(seconds: float) -> Any:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _running() -> Any:
    return JOBS.c.status == JobStatus.RUNNING.value


# One statement finishes many jobs, each with its own result: the values come
# as parallel arrays, unnested into rows. The vectors replace the row's only
# with :replace_vectors (an earlier step's stay otherwise).
# RETURNING lists _FINISHED_COLUMNS in their order; vectors only when they are
# small enough for the announcement to carry (megabytes for a big job, else).
_SUCCEED_MANY = text(
    """
    UPDATE jobs SET status = 'succeeded', result = v.result,
        vectors = CASE WHEN :replace_vectors THEN v.vectors ELSE jobs.vectors END,
        progress_done = jobs.progress_total, finished_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:results AS jsonb[]), CAST(:vectors AS bytea[]))
        AS v(id, result, vectors)
    WHERE jobs.id = v.id AND jobs.status = 'running'
    RETURNING jobs.id, jobs.tenant_id, jobs.type, jobs.status, jobs.result,
        CASE WHEN octet_length(jobs.vectors) <= :carried_bytes THEN jobs.vectors END AS vectors,
        jobs.error_code, jobs.error_message, jobs.progress_done, jobs.progress_total,
        jobs.attempts, jobs.idempotency_key, jobs.created_at, jobs.started_at, jobs.finished_at,
        jobs.callback_url, jobs.webhook_status, jobs.webhook_attempts,
        octet_length(jobs.vectors) AS vectors_bytes
    """
).columns(*_FINISHED_COLUMNS, literal_column("vectors_bytes", Integer))
_STORE_VECTORS_MANY = text(
    """
    UPDATE jobs SET vectors = v.vectors
    FROM unnest(CAST(:ids AS uuid[]), CAST(:vectors AS bytea[])) AS v(id, vectors)
    WHERE jobs.id = v.id AND jobs.status = 'running'
    RETURNING jobs.id
    """
)
_RECLAIM_MANY = text(
    """
    UPDATE jobs SET worker = NULL, claimed_at = now(), status = v.status
    FROM unnest(CAST(:ids AS uuid[]), CAST(:claimed AS timestamptz[]), CAST(:statuses AS text[]))
        AS v(id, claimed, status)
    WHERE jobs.id = v.id AND jobs.claimed_at = v.claimed
        AND jobs.status IN ('queued', 'running')
    RETURNING jobs.id
    """
)
_PROGRESS_MANY = text(
    """
    UPDATE jobs SET progress_done = v.done, progress_total = v.total
    FROM unnest(CAST(:ids AS uuid[]), CAST(:done AS int[]), CAST(:total AS int[]))
        AS v(id, done, total)
    WHERE jobs.id = v.id AND jobs.status = 'running'
    RETURNING jobs.id
    """
)


class JobStore:
    """Reads and status transitions of ``jobs`` rows, each in its own transaction."""

    def __init__(
        self,
        database_url: str,
        notify: Notify | None = None,
        *,
        changed: NotifyChanged | None = None,
        deliver: Notify | None = None,
    ) -> None:
        self.database_url = database_url
        self.notify = notify
        self.changed = changed
        self.deliver = deliver

    def _transaction(self) -> Any:
        return transaction(self.database_url)

    def _finished(
        self, rows: Sequence[Row], status: JobStatus, *, deliver: bool = True
    ) -> set[uuid.UUID]:
        # Rows come from the guarded UPDATE that made the transition: each job counts once.
        for row in rows:
            metrics.observe_finished(
                JobType(row.type).value, status.value, row.created_at, row.finished_at
            )
        if rows and self.notify is not None:
            self.notify(rows)
        if deliver and self.deliver is not None:
            with_callback = [row for row in rows if row.callback_url is not None]
            if with_callback:
                self.deliver(with_callback)
        return {row.id for row in rows}

    def _changed(self, job_ids: Sequence[uuid.UUID]) -> None:
        if job_ids and self.changed is not None:
            self.changed(job_ids)

    # -- submission -------------------------------------------------------

    def submit(
        self,
        *,
        tenant_id: uuid.UUID,
        job_type: JobType,
        params: dict[str, Any],
        total: int,
        publish: Callable[[Row], None],
    ) -> Row:
        """Write the job row (``queued``), commit, then publish its task.

        The row is committed first so a worker can never receive a task whose
        row it cannot see. When publishing fails the job is marked failed
        (``broker_unavailable``) and ``PublishFailed`` is raised, so nothing
        is left ``queued`` with no task behind it.
        """
        (job,) = self.submit_many(
            tenant_id,
            [NewJob(job_type, params, total)],
            publish=lambda jobs: publish(jobs[0]),
        )
        return job

    def submit_many(
        self,
        tenant_id: uuid.UUID,
        new_jobs: Sequence[NewJob],
        *,
        publish: Callable[[Sequence[Row]], None],
        idempotency: IdempotencyKey | None = None,
    ) -> list[Row]:
        """``submit`` for many jobs: one INSERT, one commit, one ``publish`` call.

        With ``idempotency``, the key is claimed in the same transaction (one
        statement more); a key already used raises ``KeyReused`` and nothing
        is written.
        """
        job_ids = [uuid.uuid4() for _ in new_jobs]
        with self._transaction() as connection:
            if idempotency is not None:
                idempotency_keys.claim(connection, tenant_id, idempotency, job_ids)
            jobs = connection.execute(
                insert(JOBS).returning(*SUMMARY_COLUMNS, sort_by_parameter_order=True),
                [
                    {
                        "id": job_id,
                        "tenant_id": tenant_id,
                        "type": new.type,
                        "status": JobStatus.QUEUED,
                        "params": new.params,
                        "progress_total": new.total,
                        "progress_done": 0,
                        "attempts": 0,
                        "callback_url": new.callback_url,
                    }
                    for job_id, new in zip(job_ids, new_jobs, strict=True)
                ],
            ).all()
        for job in jobs:
            metrics.JOBS_SUBMITTED.labels(type=JobType(job.type).value).inc()
        try:
            publish(jobs)
        except Exception as exc:
            self.fail_many(
                [job.id for job in jobs],
                JobErrorCode.BROKER_UNAVAILABLE,
                "the job queue could not be reached",
            )
            if idempotency is not None:
                idempotency_keys.release(self.database_url, tenant_id, idempotency.key, job_ids)
            raise PublishFailed(jobs, exc) from exc
        return jobs

    # -- worker-side transitions ------------------------------------------

    def start(self, job_id: uuid.UUID, *, max_attempts: int) -> Row | None:
        """Mark a job running and count the attempt; None if it must not run."""
        started = self.start_many({job_id: max_attempts})
        return started[0] if started else None

    def start_many(
        self, max_attempts: Mapping[uuid.UUID, int], *, worker: str | None = None
    ) -> list[Row]:
        """Mark the jobs running on ``worker`` (its identity) and count their attempts,
        in one statement; the rows of those that may run.

        A job already ``running`` may start again: its worker died and the
        broker delivered the task anew. One started more than its
        ``max_attempts`` is failed instead (``too_many_attempts``), since it
        keeps killing its worker. A finished or canceled job is not returned.
        """
        if not max_attempts:
            return []
        with self._transaction() as connection:
            started = connection.execute(
                update(JOBS)
                .where(_ids(max_attempts), _active())
                .values(
                    status=JobStatus.RUNNING,
                    attempts=JOBS.c.attempts + 1,
                    started_at=func.coalesce(JOBS.c.started_at, func.now()),
                    worker=worker,
                    claimed_at=func.now(),
                )
                .returning(*SUMMARY_COLUMNS)
            ).all()
        for job in started:
            if job.attempts == 1:
                wait = (job.started_at - job.created_at).total_seconds()
                metrics.JOB_QUEUE_WAIT.labels(type=JobType(job.type).value).observe(max(0.0, wait))
        over = [job for job in started if job.attempts > max_attempts[job.id]]
        for job in over:
            self.fail(
                job.id,
                JobErrorCode.TOO_MANY_ATTEMPTS,
                f"the job was started {job.attempts - 1} times without finishing",
            )
        running = [job for job in started if job not in over]
        self._changed([job.id for job in running])
        return running

    def resume_many(
        self,
        job_ids: Sequence[uuid.UUID],
        *,
        done: int | None = None,
        steps_left: int | None = None,
        worker: str | None = None,
    ) -> list[Row]:
        """The rows of those of the jobs still running, for their next step (vectors a
        previous step made included), now held by ``worker``, whose progress becomes
        ``done`` steps, or all but ``steps_left``."""
        if not job_ids:
            return []
        if done is not None:
            progress: Any = done
        elif steps_left is not None:
            progress = func.greatest(JOBS.c.progress_total - steps_left, 0)
        else:
            progress = JOBS.c.progress_done
        with self._transaction() as connection:
            rows = connection.execute(
                update(JOBS)
                .where(_ids(job_ids), _running())
                .values(progress_done=progress, worker=worker, claimed_at=func.now())
                .returning(*JOBS.c)
            ).all()
        if done is not None or steps_left is not None:
            self._changed([row.id for row in rows])
        return rows

    def report_progress(self, progress: Mapping[uuid.UUID, tuple[int, int]]) -> set[uuid.UUID]:
        """Record ``(done, total)`` of running jobs; the ids still running (not canceled)."""
        if not progress:
            return set()
        ids = list(progress)
        with self._transaction() as connection:
            rows = connection.execute(
                _PROGRESS_MANY,
                {
                    "ids": ids,
                    "done": [progress[i][0] for i in ids],
                    "total": [progress[i][1] for i in ids],
                },
            ).all()
        self._changed([row.id for row in rows])
        return {row.id for row in rows}

    def store_vectors(self, vectors: Mapping[uuid.UUID, bytes]) -> set[uuid.UUID]:
        """Keep what a step made for the next one, on running jobs; the ids stored."""
        if not vectors:
            return set()
        ids = list(vectors)
        with self._transaction() as connection:
            rows = connection.execute(
                _STORE_VECTORS_MANY, {"ids": ids, "vectors": [vectors[i] for i in ids]}
            ).all()
        return {row.id for row in rows}

    def succeed_many(
        self,
        results: Mapping[uuid.UUID, dict[str, Any]],
        vectors: Mapping[uuid.UUID, bytes | None] | None = None,
    ) -> set[uuid.UUID]:
        """Store the results of running jobs, in one statement; the ids stored.

        ``vectors`` replaces what the rows hold (``None`` for a job clears it);
        without it, vectors an earlier step stored stay. A job canceled
        meanwhile keeps no result.
        """
        if not results:
            return set()
        ids = list(results)
        values = {
            "ids": ids,
            # Raw SQL: the column type's sealing is applied here (models/encryption.py).
            "results": [
                json.dumps(JOBS.c.result.type.process_bind_param(results[i], None)) for i in ids
            ],
            "vectors": [(vectors or {}).get(i) for i in ids],
            "replace_vectors": vectors is not None,
            "carried_bytes": MAX_CARRIED_ROW_BYTES,
        }
        with self._transaction() as connection:
            rows = connection.execute(_SUCCEED_MANY, values).all()
        return self._finished(rows, JobStatus.SUCCEEDED)

    def succeed(self, job_id: uuid.UUID, result: dict[str, Any]) -> bool:
        """Store the result of a running job; False if it was canceled meanwhile."""
        return job_id in self.succeed_many({job_id: result})

    def fail_many(
        self, job_ids: Iterable[uuid.UUID], code: JobErrorCode | str, message: str
    ) -> set[uuid.UUID]:
        """Fail queued or running jobs with an error code and message, in one statement."""
        job_ids = list(job_ids)
        if not job_ids:
            return set()
        with self._transaction() as connection:
            rows = connection.execute(
                update(JOBS)
                .where(_ids(job_ids), _active())
                .values(
                    status=JobStatus.FAILED,
                    error_code=str(code),
                    error_message=message[:2000],
                    finished_at=func.now(),
                )
                .returning(*_FINISHED_COLUMNS)
            ).all()
        return self._finished(rows, JobStatus.FAILED)

    def fail(self, job_id: uuid.UUID, code: JobErrorCode | str, message: str) -> bool:
        return job_id in self.fail_many([job_id], code, message)

    # -- recovery (services.recovery) ---------------------------------------

    def release_many(self, job_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Let go of active jobs whose next message could not be published: no worker
        holds them now, and the recovery sweep publishes them again."""
        job_ids = list(job_ids)
        if not job_ids:
            return set()
        with self._transaction() as connection:
            rows = connection.execute(
                update(JOBS)
                .where(_ids(job_ids), _active())
                .values(worker=None, claimed_at=func.now())
                .returning(JOBS.c.id)
            ).all()
        return {row.id for row in rows}

    def orphaned(self, live_workers: Iterable[str], *, grace: float, limit: int) -> list[Row]:
        """Running jobs held by a worker not among ``live_workers``, claimed more than
        ``grace`` seconds ago (a worker beats only once it is ready)."""
        with self._transaction() as connection:
            return connection.execute(
                select(*_RECOVERY_COLUMNS)
                .where(
                    _running(),
                    JOBS.c.worker.is_not(None),
                    JOBS.c.worker != all_(bindparam("live", list(live_workers), ARRAY(String))),
                    JOBS.c.claimed_at < _seconds_ago(grace),
                )
                .order_by(JOBS.c.claimed_at)
                .limit(limit)
            ).all()

    def unclaimed(self, *, after: float, stale_after: float, limit: int) -> list[Row]:
        """Active jobs no worker has held for ``after`` seconds, and those a worker
        claimed more than ``stale_after`` seconds ago, oldest claim first."""
        ago, stale = _seconds_ago(after), _seconds_ago(stale_after)
        with self._transaction() as connection:
            return connection.execute(
                select(*_RECOVERY_COLUMNS)
                .where(
                    _active(),
                    JOBS.c.claimed_at < ago,
                    or_(JOBS.c.worker.is_(None), JOBS.c.claimed_at < stale),
                )
                .order_by(JOBS.c.claimed_at)
                .limit(limit)
            ).all()

    def reclaim(
        self, seen: Sequence[Row], statuses: Mapping[uuid.UUID, JobStatus]
    ) -> set[uuid.UUID]:
        """Take the jobs from their worker as the sweep ``seen`` them, in one statement:
        no worker holds them, their claim starts now, and their status becomes
        ``statuses[id]`` (a job sent back to its first task is ``queued`` again).
        A job changed since it was seen is left alone; the ids taken."""
        if not seen:
            return set()
        with self._transaction() as connection:
            rows = connection.execute(
                _RECLAIM_MANY,
                {
                    "ids": [row.id for row in seen],
                    "claimed": [row.claimed_at for row in seen],
                    "statuses": [str(statuses[row.id]) for row in seen],
                },
            ).all()
        taken = {row.id for row in rows}
        self._changed(list(taken))
        return taken

    # -- caller-side ------------------------------------------------------

    def cancel(self, tenant_id: uuid.UUID, job_id: uuid.UUID, *, actor: str) -> Row:
        """Cancel a queued or running job of this tenant.

        Raises ``JobNotFound`` for an unknown job and ``JobAlreadyFinished``
        once it has succeeded, failed or been canceled.
        """
        with self._transaction() as connection:
            job = connection.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.tenant_id == tenant_id, _active())
                .values(status=JobStatus.CANCELED, finished_at=func.now())
                .returning(*SUMMARY_COLUMNS)
            ).one_or_none()
            if job is not None:
                connection.execute(
                    insert(AuditLog.__table__).values(
                        tenant_id=tenant_id,
                        actor=actor,
                        action="job.cancel",
                        target_type="job",
                        target_id=str(job_id),
                    )
                )
        if job is None:
            raise JobAlreadyFinished(self.get(tenant_id, job_id))
        self._finished([job], JobStatus.CANCELED)
        return job

    def delete(self, tenant_id: uuid.UUID, job_id: uuid.UUID, *, actor: str) -> tuple[Row, bool]:
        """Delete a job of this tenant, canceling it first if it is queued or running;
        the deleted row, and whether it was active (its task is to be revoked).

        Raises ``JobNotFound`` for an unknown job. Its workers' guarded updates
        find no row and stop as they do for a canceled job.
        """
        with self._transaction() as connection:
            canceled = connection.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.tenant_id == tenant_id, _active())
                .values(status=JobStatus.CANCELED, finished_at=func.now())
                .returning(*_FINISHED_COLUMNS)
            ).one_or_none()
            job = connection.execute(
                JOBS.delete()
                .where(JOBS.c.id == job_id, JOBS.c.tenant_id == tenant_id)
                .returning(*SUMMARY_COLUMNS)
            ).one_or_none()
            if job is None:
                raise JobNotFound(str(job_id))
            connection.execute(
                insert(AuditLog.__table__).values(
                    tenant_id=tenant_id,
                    actor=actor,
                    action="job.delete",
                    target_type="job",
                    target_id=str(job_id),
                    details={"status": JobStatus(job.status).value},
                )
            )
        if canceled is not None:
            self._finished([canceled], JobStatus.CANCELED)
        return job, canceled is not None

    def announce_canceled(self, rows: Sequence[Row]) -> None:
        """Jobs canceled by ``cancel_where`` in a transaction now committed: counted, and
        announced to whoever waits on them. No webhook: an erasure deleted their rows."""
        self._finished(rows, JobStatus.CANCELED, deliver=False)

    def get(self, tenant_id: uuid.UUID, job_id: uuid.UUID, *, vectors: bool = True) -> Row:
        jobs = self.get_many(tenant_id, [job_id], vectors=vectors)
        if not jobs:
            raise JobNotFound(str(job_id))
        return jobs[0]

    def get_any(self, job_id: uuid.UUID) -> Row | None:
        """The job whatever its tenant (for workers, which act on ids they were sent)."""
        with self._transaction() as connection:
            return connection.execute(select(*JOBS.c).where(JOBS.c.id == job_id)).one_or_none()

    def get_many(
        self, tenant_id: uuid.UUID, job_ids: Sequence[uuid.UUID], *, vectors: bool = True
    ) -> list[Row]:
        """This tenant's jobs among ``job_ids``, in that order (unknown ones left out)."""
        columns = JOBS.c if vectors else SUMMARY_COLUMNS
        with self._transaction() as connection:
            rows = connection.execute(
                select(*columns).where(_ids(job_ids), JOBS.c.tenant_id == tenant_id)
            ).all()
        by_id = {row.id: row for row in rows}
        return [by_id[job_id] for job_id in job_ids if job_id in by_id]

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
        conditions = [JOBS.c.tenant_id == tenant_id]
        if status is not None:
            conditions.append(JOBS.c.status == status)
        if job_type is not None:
            conditions.append(JOBS.c.type == job_type)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            conditions.append(
                or_(
                    JOBS.c.created_at < created_at,
                    and_(JOBS.c.created_at == created_at, JOBS.c.id < last_id),
                )
            )
        query = (
            select(*SUMMARY_COLUMNS)
            .where(*conditions)
            .order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc())
            .limit(bindparam("limit", limit + 1))
        )
        with self._transaction() as connection:
            jobs = connection.execute(query).all()
        has_more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next_cursor=encode_cursor(jobs[-1]) if has_more else None)


def cancel_where(connection: Connection, tenant_id: uuid.UUID, condition: Any) -> list[Row]:
    """Cancel the tenant's queued and running jobs that match ``condition``, in the
    caller's transaction (an erasure's); their rows, for ``JobStore.announce_canceled``
    once it has committed. ``started_at`` says which had started."""
    return list(
        connection.execute(
            update(JOBS)
            .where(JOBS.c.tenant_id == tenant_id, _active(), condition)
            .values(status=JobStatus.CANCELED, finished_at=func.now())
            .returning(*_FINISHED_COLUMNS)
        ).all()
    )
