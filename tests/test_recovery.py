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
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from kombu.transport.redis import Channel
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

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
    wait_for,
)
from worker import presence
from worker.queues import Queue, TaskName, task_modules_for
from worker.schedule import beat_schedule

ROOT = Path(__file__).resolve().parent.parent
BOUND_SECONDS = 60
LONG_TEXT = " ".join(f"word{i}" for i in range(200))
# Texts per embed job of a round: a batch long enough to be killed mid-way.
TEXTS = 16


@pytest.fixture(autouse=True)
def no_active_jobs_of_earlier_tests(settings, stack):
    """The sweep looks at every job of the database: the jobs earlier tests left queued
    or running (their broker long emptied) would be published to this test's broker."""
    engine = create_engine(settings.database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE jobs SET status = 'canceled', finished_at = now() "
                    "WHERE status IN ('queued', 'running')"
                )
            )
    finally:
        engine.dispose()


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
    for module in task_modules_for(Queue.CPU):
        celery.loader.import_task_module(module)
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


# -- end to end: real workers, Celery beat, faults --------------------------------


class Beat:
    """A real ``celery beat`` process sending the schedule of worker/schedule.py."""

    def __init__(self, env, log_dir):
        self.log_path = log_dir / "beat.log"
        self.command = [
            sys.executable, "-m", "celery", "--app", "worker.celery_app:celery_app", "beat",
            "--loglevel", "INFO", "--schedule", str(log_dir / "beat-schedule"),
        ]  # fmt: skip
        self.env = env
        self.process = None

    def __enter__(self):
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: "beat: Starting" in self.log_path.read_text(), 60, "beat to start")
        return self

    def __exit__(self, *exc_info):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Workers:
    """The gpu pool and the cpu pool (with tests.faults), started side by side, and
    restarted under the same hostnames: new incarnations of the same workers."""

    def __init__(self, env, log_dir):
        self.env, self.log_dir = env, log_dir
        self.gpu = WorkerProcess(env, log_dir, **GPU_POOL)
        self.cpu = self._cpu()

    def _cpu(self, hostname=None):
        return WorkerProcess(
            self.env, self.log_dir, queue="cpu", pool="prefork", concurrency=2,
            extra_args=("--include", "tests.faults"), hostname=hostname,
        )  # fmt: skip

    def start(self):
        self.gpu.launch(), self.cpu.launch()
        self.gpu.wait_ready(), self.cpu.wait_ready()
        return self

    def restart(self):
        self.gpu = WorkerProcess(self.env, self.log_dir, **GPU_POOL, hostname=self.gpu.hostname)
        self.cpu = self._cpu(self.cpu.hostname)
        return self.start()

    def logs(self):
        return self.gpu.log() + self.cpu.log()

    def stop(self):
        self.gpu.stop(), self.cpu.stop()


def post_conversation(client, headers, contents, **extra):
    body = {
        "conversation_id": f"c-{uuid.uuid4().hex[:8]}",
        "messages": [{"role": "user", "content": content} for content in contents],
        "summarize": False,
        "embed": True,
        **extra,
    }
    response = client.post("/v1/jobs/conversation", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return {**response.get_json(), "conversation_id": body["conversation_id"]}


def job_of(client, headers, job_id):
    return client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()


def wait_all_finished(client, headers, job_ids, timeout):
    def finished():
        jobs = [job_of(client, headers, job_id) for job_id in job_ids]
        return (
            jobs if all(j["status"] in {"succeeded", "failed", "canceled"} for j in jobs) else None
        )

    return wait_for(finished, timeout, f"{len(job_ids)} jobs to finish", interval=0.5)


def finished_at(job):
    return datetime.fromisoformat(job["finished_at"]).timestamp()


def succeeded_once(logs, job_ids):
    """Every job logged ``job succeeded`` exactly once, whatever ran it twice."""
    lines = [line for line in logs.splitlines() if "job succeeded" in line]
    return {job_id: sum(job_id in line for line in lines) for job_id in job_ids}


def redeliver_unacked(client):
    """What the broker does after the visibility timeout (3,600 s), now: every
    message still unacknowledged goes back on its queue."""
    for tag, raw in client.hgetall(Channel.unacked_key).items():
        payload, _exchange, routing_key = json.loads(raw)
        client.lpush(routing_key, json.dumps(payload))
        client.hdel(Channel.unacked_key, tag)
        client.zrem(Channel.unacked_index_key, tag)


# Each round costs ~30 s (both workers restart); the soak (bench/soak.py) runs longer.
KILL_ROUNDS = 2


def kill_round(client, headers, workers):
    """Kill both workers mid-work, start them again, wait for the round's jobs:
    its conversation, its embed jobs, and the seconds from each kill to their end."""
    slow_before = workers.cpu.log().count("fault: slow after upsert")
    conversation = post_conversation(
        client,
        headers,
        [f"My parcel is late. {SLOW_AFTER_UPSERT}", "Sorry, it leaves today."],
        summarize=True,
    )
    wait_for(
        lambda: workers.cpu.log().count("fault: slow after upsert") > slow_before,
        60,
        "the cpu worker to index the conversation",
    )
    batch = [submit_embed(client, headers, [LONG_TEXT] * TEXTS, store=i < 2) for i in range(5)]
    wait_for(
        lambda: any(job_of(client, headers, job["id"])["status"] == "running" for job in batch),
        30,
        "a batch to run",
        interval=0.05,
    )
    cpu_killed = time.time()
    workers.cpu.kill()
    gpu_killed = time.time()
    workers.gpu.kill()
    workers.restart()
    done = wait_all_finished(client, headers, [conversation["id"]] + [j["id"] for j in batch], 90)
    assert all(job["status"] == "succeeded" for job in done), done
    gpu_time = max(finished_at(job) - gpu_killed for job in done[1:])
    return conversation, batch, finished_at(done[0]) - cpu_killed, gpu_time


@pytest.mark.timeout(420)
def test_kill_9_of_each_worker_mid_work_at_default_settings(
    settings, stack, headers, worker_env, tmp_path, memory_store
):
    """Two rounds: the cpu worker is killed while it indexes a conversation (its
    vectors written, the job not yet done) and the gpu worker mid-batch, with
    jobs queued behind; both come back under their old hostnames. A publish is
    dropped in the first round. Each job ends ``succeeded`` within 60 s of its
    kill, once; messages and vectors are stored once each."""
    tenant = authenticate(settings.database_url, headers["Authorization"][7:]).tenant_id
    store = JobStore(settings.database_url)
    with private_broker(settings.redis_url, PrivateDb.RELIABILITY) as url:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        client = app.test_client()
        env = {**worker_env, "REDIS_URL": url}
        workers = Workers(env, tmp_path).start()
        try:
            with Beat(env, tmp_path):
                lost = store.submit_many(
                    tenant,
                    [NewJob(JobType.EMBED, {"texts": ["lost"], "store": False}, 1)] * 2,
                    publish=lambda jobs: None,
                )
                conversations, embeds, gpu_times, cpu_times = [], [], [], []
                for _round in range(KILL_ROUNDS):
                    conversation, batch, cpu_time, gpu_time = kill_round(client, headers, workers)
                    conversations.append(conversation)
                    embeds += batch
                    cpu_times.append(cpu_time)
                    gpu_times.append(gpu_time)
                recovered = wait_all_finished(client, headers, [str(j.id) for j in lost], 60)
                assert [job["status"] for job in recovered] == ["succeeded"] * 2

                # The dead workers' messages come back after the visibility
                # timeout: make that happen now; it changes nothing.
                redeliver_unacked(redis.Redis.from_url(url))
                broker = redis.Redis.from_url(url)
                wait_for(
                    lambda: (
                        all(queue_length(broker, queue) == 0 for queue in ("gpu", "cpu"))
                        and broker.hlen(Channel.unacked_key) == 0
                    ),
                    60,
                    "the late deliveries to be consumed",
                )
                time.sleep(2)
        finally:
            workers.stop()

        job_ids = [c["id"] for c in conversations] + [e["id"] for e in embeds]
        job_ids += [str(job.id) for job in lost]
        assert set(succeeded_once(workers.logs(), job_ids).values()) == {1}
        for job in wait_all_finished(client, headers, job_ids, 5):
            assert job["status"] == "succeeded", job
    print(
        f"\nkill -9 to succeeded, {KILL_ROUNDS} rounds: gpu max {max(gpu_times):.1f}s median "
        f"{statistics.median(gpu_times):.1f}s; cpu max {max(cpu_times):.1f}s median "
        f"{statistics.median(cpu_times):.1f}s"
    )
    assert max(gpu_times + cpu_times) <= BOUND_SECONDS
    for conversation in conversations:
        view = client.get(
            f"/v1/conversations/{conversation['conversation_id']}", headers=headers
        ).get_json()
        assert [m["seq"] for m in view["messages"]] == [1, 2]
    assert memory_store.count(str(tenant), kind="message") == 2 * len(conversations)
    assert memory_store.count(str(tenant), kind="summary") == len(conversations)
    with transaction(settings.database_url) as connection:
        summaries = connection.execute(
            text(
                "SELECT count(*) FROM summaries JOIN conversations c "
                "ON c.id = summaries.conversation_id WHERE c.tenant_id = :t"
            ),
            {"t": tenant},
        ).scalar()
    assert summaries == len(conversations)
    assert memory_store.count(str(tenant), kind="text") == TEXTS * 2 * len(conversations)


class JobStream:
    """Submits a steady mix of jobs from a thread until ``stop()``: a long embed job,
    an embed job to index, and a conversation to index. Keeps every answer."""

    def __init__(self, app, headers):
        self.client = app.test_client()
        self.headers = headers
        self.answers = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _submit(self, n):
        kind = n % 3
        if kind == 0:
            path, body = "/v1/jobs/embed", {"texts": [LONG_TEXT] * TEXTS}
        elif kind == 1:
            path, body = "/v1/jobs/embed", {"texts": [f"text {n}.{i}" for i in range(4)]}
            body["store"] = True
        else:
            path = "/v1/jobs/conversation"
            body = {
                "conversation_id": f"stream-{n}",
                "messages": [
                    {"role": "user", "content": f"question {n}"},
                    {"role": "assistant", "content": f"answer {n}"},
                ],
                "summarize": False,
            }
        response = self.client.post(path, json=body, headers=self.headers)
        self.answers.append((n, kind, response.status_code, response.get_json(), response.headers))

    def _run(self):
        n = 0
        while not self._stopped.is_set():
            self._submit(n)
            n += 1
            self._stopped.wait(0.3)

    def accepted(self, kind=None):
        return [answer for answer in self.answers if answer[2] == 202 and kind in (None, answer[1])]

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopped.set()
        self._thread.join(30)


@pytest.mark.timeout(300)
def test_redis_stopped_for_10_s_mid_batch_loses_no_accepted_job(
    settings, stack, headers, worker_env, tmp_path, memory_store
):
    url = f"redis://127.0.0.1:{free_port()}/0"
    data_dir = tmp_path / "redis"
    server = ensure_redis(url, data_dir)
    assert server is not None
    app = create_app(settings.model_copy(update={"redis_url": url}))
    client = app.test_client()
    env = {**worker_env, "REDIS_URL": url}
    tenant = str(authenticate(settings.database_url, headers["Authorization"][7:]).tenant_id)
    workers = Workers(env, tmp_path)
    try:
        workers.start()
        with Beat(env, tmp_path):
            stream = JobStream(app, headers).start()
            wait_for(
                lambda: any(
                    job_of(client, headers, answer[3]["id"])["status"] == "running"
                    for answer in stream.accepted(kind=0)
                ),
                60,
                "a long embed job to run",
                interval=0.05,
            )
            server.stop()
            time.sleep(10)
            server = ensure_redis(url, data_dir)
            time.sleep(3)
            stream.stop()
            accepted = [answer[3]["id"] for answer in stream.accepted()]
            done = wait_all_finished(client, headers, accepted, 120)
    finally:
        workers.stop()
        if server is not None:
            server.stop()

    assert [job["status"] for job in done] == ["succeeded"] * len(done), [
        (job["id"], job["status"], job["error"]) for job in done if job["status"] != "succeeded"
    ]
    refused = [answer for answer in stream.answers if answer[2] != 202]
    assert refused, "some jobs were submitted while Redis was down"
    for _n, _kind, status, body, response_headers in refused:
        assert status == 503, body
        assert body["error"]["code"] == "broker_unavailable"
        assert int(response_headers["Retry-After"]) > 0
    assert set(succeeded_once(workers.logs(), accepted).values()) == {1}
    assert memory_store.count(tenant, kind="text") == 4 * len(stream.accepted(kind=1))
    assert memory_store.count(tenant, kind="message") == 2 * len(stream.accepted(kind=2))
