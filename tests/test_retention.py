"""Retention: a tenant's data older than its limit goes from PostgreSQL and Milvus, newer
data stays; run directly, again (a no-op), and as the periodic task on a real worker."""

import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import select, text

from models import AuditLog, Conversation, Job, Message, Summary, Tenant
from models.db import session_scope, transaction
from services import retention
from services.tenants import create_api_key
from tests.support import wait_for, wait_for_job
from worker.queues import TaskName

AGO = "now() - interval '40 days'"


def _submit(client, headers, route, body):
    response = client.post(f"/v1/jobs/{route}", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _conversation(client, headers, conversation_id, count, first=0):
    messages = [
        {"role": "user", "content": f"{conversation_id} says thing number {i}."}
        for i in range(first, first + count)
    ]
    body = {"conversation_id": conversation_id, "user_id": "u-ret", "messages": messages}
    return _submit(client, headers, "conversation", body)


def _embed(client, headers, user_id):
    body = {"texts": [f"a note of {user_id}", "and one more"], "store": True, "user_id": user_id}
    return _submit(client, headers, "embed", body)


def _backdate(database_url, statements, **params):
    with transaction(database_url) as connection:
        for statement in statements:
            connection.execute(text(statement.format(ago=AGO)), params)


def _new_tenant(settings):
    name = f"ret-{uuid.uuid4().hex[:12]}"
    principal, key = create_api_key(settings.database_url, name, actor="test")
    return name, principal.tenant_id, {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def data(app, settings, gpu_worker, cpu_worker):
    """A tenant with, through the real pipeline: a live conversation posted twice whose
    first post is 40 days old; a conversation entirely 40 days old; an old and a new
    embed job that stored their vectors."""
    client = app.test_client()
    name, tenant_id, headers = _new_tenant(settings)
    live, dead = f"live-{uuid.uuid4().hex[:6]}", f"dead-{uuid.uuid4().hex[:6]}"
    old_live = _conversation(client, headers, live, 3)
    jobs = [old_live, _conversation(client, headers, dead, 2)]
    jobs += [_embed(client, headers, "u-old"), _embed(client, headers, "u-new")]
    assert wait_for_job(client, headers, old_live, timeout=120)["status"] == "succeeded"
    jobs.append(_conversation(client, headers, live, 2, first=3))
    for job_id in jobs:
        assert wait_for_job(client, headers, job_id, timeout=120)["status"] == "succeeded"
    with session_scope(settings.database_url) as session:
        pks = dict(
            session.execute(
                select(Conversation.external_id, Conversation.id).where(
                    Conversation.tenant_id == tenant_id
                )
            ).all()
        )
    _backdate(
        settings.database_url,
        [
            "UPDATE jobs SET created_at = {ago}, finished_at = {ago} WHERE id = ANY(:old_jobs)",
            "UPDATE messages SET created_at = {ago} WHERE conversation_id = :live AND seq <= 3",
            "UPDATE summaries SET created_at = {ago} WHERE conversation_id = :live "
            "AND upto_seq <= 3",
            "UPDATE conversations SET created_at = {ago} WHERE id = :live",
            "UPDATE messages SET created_at = {ago} WHERE conversation_id = :dead",
            "UPDATE summaries SET created_at = {ago} WHERE conversation_id = :dead",
            "UPDATE conversations SET created_at = {ago}, updated_at = {ago} WHERE id = :dead",
        ],
        old_jobs=[uuid.UUID(job_id) for job_id in jobs[:3]],
        live=pks[live],
        dead=pks[dead],
    )
    return SimpleNamespace(
        name=name,
        tenant=str(tenant_id),
        tenant_id=tenant_id,
        live=live,
        dead=dead,
        live_pk=pks[live],
        old_jobs=set(jobs[:3]),
        new_jobs={jobs[3], jobs[4]},
        new_embed=jobs[3],
    )


def _stored(settings, data):
    with session_scope(settings.database_url) as session:
        seqs = session.scalars(
            select(Message.seq).where(Message.conversation_id == data.live_pk).order_by("seq")
        ).all()
        summaries = session.scalars(
            select(Summary.upto_seq).where(Summary.conversation_id == data.live_pk)
        ).all()
        conversations = session.scalars(
            select(Conversation.external_id).where(Conversation.tenant_id == data.tenant_id)
        ).all()
        jobs = {
            str(i) for i in session.scalars(select(Job.id).where(Job.tenant_id == data.tenant_id))
        }
    return SimpleNamespace(
        seqs=list(seqs), summaries=list(summaries), conversations=set(conversations), jobs=jobs
    )


def _vectors(memory_store, data):
    count = memory_store.count
    return {
        "live messages": count(data.tenant, conversation_id=data.live, kind="message"),
        "live summary": count(data.tenant, conversation_id=data.live, kind="summary"),
        "dead": count(data.tenant, conversation_id=data.dead),
        "u-old": count(data.tenant, user_id="u-old"),
        "u-new": count(data.tenant, user_id="u-new"),
    }


def test_data_past_the_limit_is_purged_and_newer_data_stays(app, settings, memory_store, data):
    assert _vectors(memory_store, data) == {
        "live messages": 5, "live summary": 1, "dead": 3, "u-old": 2, "u-new": 2,
    }  # fmt: skip
    runner = app.test_cli_runner()
    result = runner.invoke(args=["set-retention", "--tenant", data.name, "--days", "30"])
    assert result.exit_code == 0, result.output

    purged = retention.purge_expired(settings.database_url, memory_store, default_days=None)
    mine = purged[data.tenant_id]
    assert (mine.messages, mine.summaries, mine.conversations, mine.jobs) == (5, 2, 1, 3)
    assert mine.complete
    stored = _stored(settings, data)
    assert stored.seqs == [4, 5], "the second post's messages stay"
    assert stored.summaries == [5], "the latest summary stays"
    assert stored.conversations == {data.live}, "the emptied old conversation is gone"
    assert stored.jobs == data.new_jobs
    assert _vectors(memory_store, data) == {
        "live messages": 2, "live summary": 1, "dead": 0, "u-old": 0, "u-new": 2,
    }  # fmt: skip

    again = retention.purge_expired(settings.database_url, memory_store, default_days=None)
    assert again[data.tenant_id].rows == 0, "a second run finds nothing"
    with session_scope(settings.database_url) as session:
        entries = session.scalars(
            select(AuditLog).where(
                AuditLog.tenant_id == data.tenant_id, AuditLog.action == "retention.purge"
            )
        ).all()
    assert len(entries) == 1, "only a run that purged something is audited"
    details = entries[0].details
    assert (details["outcome"], details["retention_days"], details["messages"]) == (
        "completed", 30, 5,
    )  # fmt: skip


def test_the_periodic_task_purges_on_a_real_worker(app, settings, memory_store, data):
    celery = app.extensions["celery"]
    entry = celery.conf.beat_schedule["purge-retention"]
    assert entry["task"] == TaskName.PURGE_RETENTION.value
    assert entry["schedule"] == settings.retention_interval_seconds
    _backdate(
        settings.database_url,
        ["UPDATE jobs SET created_at = {ago}, finished_at = {ago} WHERE id = :job"],
        job=uuid.UUID(data.new_embed),
    )
    assert memory_store.count(data.tenant, user_id="u-new") == 2
    with transaction(settings.database_url) as connection:
        connection.execute(
            text("UPDATE tenants SET retention_days = 30 WHERE id = :id"), {"id": data.tenant_id}
        )
    celery.send_task(TaskName.PURGE_RETENTION.value)

    def purged():
        return data.new_embed not in _stored(settings, data).jobs

    wait_for(purged, 60, "the cpu worker's retention run")
    assert memory_store.count(data.tenant, user_id="u-new") == 0


def test_set_retention_decides_which_tenants_have_a_limit(app, settings):
    name, tenant_id, _ = _new_tenant(settings)
    runner = app.test_cli_runner()

    def limit(*args, default_days=None):
        result = runner.invoke(args=["set-retention", "--tenant", name, *args])
        assert result.exit_code == 0, result.output
        return dict(retention.tenant_limits(settings.database_url, default_days)).get(tenant_id)

    assert limit("--days", "7") == 7
    assert limit("--forever", default_days=30) is None, "kept forever, whatever the default"
    assert limit("--default", default_days=30) == 30
    assert limit("--default") is None, "no default: kept forever"
    with session_scope(settings.database_url) as session:
        stored = session.scalar(select(Tenant.retention_days).where(Tenant.id == tenant_id))
        actions = session.scalars(
            select(AuditLog.details)
            .where(AuditLog.tenant_id == tenant_id, AuditLog.action == "tenant.retention")
            .order_by(AuditLog.id)
        ).all()
    assert stored is None
    assert [details["retention_days"] for details in actions] == [7, 0, None, None]

    for args, code, said in [
        (["--days", "7", "--forever"], 2, "exactly one"),
        ([], 2, "exactly one"),
        (["--days", "0"], 2, "--days"),
    ]:
        result = runner.invoke(args=["set-retention", "--tenant", name, *args])
        assert (result.exit_code, said in result.output) == (code, True), result.output
    result = runner.invoke(args=["set-retention", "--tenant", "no-such-tenant", "--days", "7"])
    assert (result.exit_code, "no tenant" in result.output) == (1, True), result.output
