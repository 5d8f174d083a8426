"""The job lifecycle on its own: ``JobStore`` against PostgreSQL, no broker, no Celery."""

import uuid

import pytest
from sqlalchemy import event, select

from models import AuditLog, Job, JobStatus, JobType
from models.db import get_engine, session_scope
from services.jobs import (
    InvalidCursor,
    JobAlreadyFinished,
    JobNotFound,
    JobStore,
    NewJob,
    PublishFailed,
    decode_cursor,
    parse_job_id,
)
from services.tenants import create_api_key


@pytest.fixture
def store(settings, stack):
    return JobStore(settings.database_url)


@pytest.fixture
def tenant_id(settings, stack):
    principal, _ = create_api_key(settings.database_url, f"t-{uuid.uuid4().hex[:8]}", actor="test")
    return principal.tenant_id


@pytest.fixture
def submit(store, tenant_id):
    def submit():
        return store.submit(
            tenant_id=tenant_id,
            job_type=JobType.EMBED,
            params={"texts": ["x"]},
            total=1,
            publish=lambda job: None,
        )

    return submit


def test_the_row_is_committed_before_the_task_is_published(store, tenant_id, settings):
    seen_by_another_session = []

    def publish(job) -> None:
        with session_scope(settings.database_url) as session:
            seen_by_another_session.append(session.get(Job, job.id).status)

    job = store.submit(
        tenant_id=tenant_id, job_type=JobType.EMBED, params={}, total=0, publish=publish
    )
    assert seen_by_another_session == [JobStatus.QUEUED]
    assert job.status == JobStatus.QUEUED


def test_a_failed_publish_fails_the_job(store, tenant_id):
    def publish(jobs) -> None:
        raise ConnectionError("redis is down")

    with pytest.raises(PublishFailed) as raised:
        store.submit_many(tenant_id, [NewJob(JobType.EMBED, {}, 0)] * 3, publish=publish)
    assert len(raised.value.jobs) == 3
    for job in raised.value.jobs:
        job = store.get(tenant_id, job.id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "broker_unavailable")


def test_many_jobs_are_written_in_order_and_published_once(store, tenant_id):
    published = []
    jobs = store.submit_many(
        tenant_id,
        [NewJob(JobType.EMBED, {"texts": [str(i)]}, 1) for i in range(5)],
        publish=published.append,
    )
    assert [job.params["texts"] for job in jobs] == [[str(i)] for i in range(5)]
    assert len(published) == 1
    assert [job.id for job in published[0]] == [job.id for job in jobs]
    assert all(job.status == JobStatus.QUEUED for job in jobs)


def test_start_counts_attempts_and_stops_a_job_that_keeps_failing(store, submit):
    job = submit()
    assert store.start(job.id, max_attempts=2).attempts == 1
    assert store.start(job.id, max_attempts=2).attempts == 2  # redelivered after a crash
    assert store.start(job.id, max_attempts=2) is None
    failed = store.get(job.tenant_id, job.id)
    assert (failed.status, failed.error_code, failed.attempts) == (
        JobStatus.FAILED,
        "too_many_attempts",
        3,
    )


@pytest.mark.parametrize("finish", ["succeed", "fail", "cancel"])
def test_a_finished_job_never_starts_again(store, submit, finish):
    job = submit()
    store.start(job.id, max_attempts=3)
    if finish == "succeed":
        assert store.succeed(job.id, {"ok": True})
    elif finish == "fail":
        assert store.fail(job.id, "boom", "it broke")
    else:
        store.cancel(job.tenant_id, job.id, actor="test")
    before = store.get(job.tenant_id, job.id)
    assert store.start(job.id, max_attempts=3) is None
    after = store.get(job.tenant_id, job.id)
    assert (after.status, after.attempts, after.result) == (
        before.status,
        before.attempts,
        before.result,
    )


def test_only_one_outcome_is_stored(store, submit):
    job = submit()
    store.start(job.id, max_attempts=3)
    assert store.succeed(job.id, {"first": 1})
    assert not store.succeed(job.id, {"second": 2})
    assert not store.fail(job.id, "late", "too late")
    assert store.get(job.tenant_id, job.id).result == {"first": 1}


def test_cancel_while_running_stops_progress_and_drops_the_result(store, submit):
    job = submit()
    store.start(job.id, max_attempts=3)
    assert store.report_progress({job.id: (1, 4)}) == {job.id}
    assert store.get(job.tenant_id, job.id).progress_done == 1
    store.cancel(job.tenant_id, job.id, actor="test")
    assert store.report_progress({job.id: (2, 4)}) == set()
    assert not store.store_vectors({job.id: b"\0" * 16})
    assert not store.succeed(job.id, {"late": True})
    final = store.get(job.tenant_id, job.id)
    assert (final.status, final.result, final.progress_done) == (JobStatus.CANCELED, None, 1)
    assert final.vectors is None


def test_a_batch_of_jobs_starts_and_finishes_in_one_statement_each(store, submit, settings):
    jobs = [submit() for _ in range(20)]
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = get_engine(settings.database_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        started = store.start_many({job.id: 3 for job in jobs})
        finished = store.succeed_many(
            {job.id: {"n": i} for i, job in enumerate(jobs)},
            {job.id: bytes([i]) * 8 for i, job in enumerate(jobs)},
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(started) == 20
    assert finished == {job.id for job in jobs}
    assert len(statements) == 2, statements
    for i, job in enumerate(jobs):
        row = store.get(job.tenant_id, job.id)
        assert (row.status, row.result, row.vectors) == (
            JobStatus.SUCCEEDED,
            {"n": i},
            bytes([i]) * 8,
        )


def test_cancel_is_audited_and_refused_once_finished(store, submit, settings):
    job = submit()
    store.cancel(job.tenant_id, job.id, actor="cvq_abcd1234")
    with pytest.raises(JobAlreadyFinished) as raised:
        store.cancel(job.tenant_id, job.id, actor="cvq_abcd1234")
    assert raised.value.job.status == JobStatus.CANCELED
    with session_scope(settings.database_url) as session:
        audit = session.scalars(select(AuditLog).where(AuditLog.target_id == str(job.id))).all()
        assert [(a.action, a.actor) for a in audit] == [("job.cancel", "cvq_abcd1234")]


def test_another_tenant_cannot_read_or_cancel(store, submit, settings):
    job = submit()
    other, _ = create_api_key(settings.database_url, f"t-{uuid.uuid4().hex[:8]}", actor="test")
    with pytest.raises(JobNotFound):
        store.get(other.tenant_id, job.id)
    with pytest.raises(JobNotFound):
        store.cancel(other.tenant_id, job.id, actor="test")
    assert store.get(job.tenant_id, job.id).status == JobStatus.QUEUED


@pytest.mark.parametrize("raw", ["", "nope", "123", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"])
def test_malformed_ids_are_unknown_jobs(raw):
    with pytest.raises(JobNotFound):
        parse_job_id(raw)


@pytest.mark.parametrize("cursor", ["", "!!", "bm90IGpzb24", "eyJ0IjogMX0", "e30"])
def test_malformed_cursors_are_refused(cursor):
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


def test_pages_cover_every_job_once_even_with_equal_timestamps(store, tenant_id, settings):
    ids = []
    with session_scope(settings.database_url) as session:  # one transaction: one now()
        for _ in range(7):
            job = Job(tenant_id=tenant_id, type=JobType.EMBED, params={}, progress_total=0)
            session.add(job)
            session.flush()
            ids.append(job.id)
    seen, cursor = [], None
    while True:
        page = store.list(tenant_id, cursor=cursor, limit=3)
        seen.extend(job.id for job in page.jobs)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen)) == 7
