"""Outages of the services underneath, for real: PostgreSQL stopped for 30 s under a
stream of requests, Milvus Lite killed (-9) during indexing. The API answers 503 with
Retry-After meanwhile, never 500; the workers retry with a bounded backoff, and
every job accepted before or after ends ``succeeded`` with nothing lost or doubled.

The tests with processes share one PostgreSQL, one Milvus Lite and two workers
of their own (``own_stack``); the last of them leaves Milvus down.
"""

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from celery_batches import SimpleRequest
from sqlalchemy.exc import OperationalError

from api import create_app
from config import RetrySettings, Settings
from devstack.services import EmbeddedService, ensure_database, ensure_milvus, ensure_postgres
from devstack.stack import migrate
from services.tenants import authenticate, create_api_key
from tasks.batch import Batch, Delivery
from tasks.retry import backoff_delay, retry_window
from tests.support import (
    FINISHED,
    GPU_POOL,
    PrivateDb,
    WorkerProcess,
    free_port,
    private_broker,
    wait_for,
)
from vectorstore import MemoryStore
from worker.messages import JobMessage, read_message, task_args
from worker.queues import TASK_QUEUES, TaskName

POSTGRES_DOWN_SECONDS = 30
BACKLOG_JOBS = 40
LONG_TEXTS = [" ".join(f"word{i}" for i in range(100))] * 4
MILVUS_DOWN_SECONDS = 5


def test_backoff_grows_exponentially_within_its_bounds():
    policy = RetrySettings(max_retries=8, backoff=1.0, backoff_max=30.0)
    longest = [backoff_delay(n, policy, rand=lambda: 0.0) for n in range(8)]
    shortest = [backoff_delay(n, policy, rand=lambda: 1.0) for n in range(8)]
    assert longest == [1, 2, 4, 8, 16, 30, 30, 30]
    assert shortest == [delay / 2 for delay in longest]
    assert backoff_delay(8, policy) is None, "the retries are spent"
    huge = backoff_delay(10**6, RetrySettings(max_retries=10**7, backoff_max=30.0))
    assert 15 <= huge <= 30, "no overflow far along"
    assert retry_window(policy) == (60.5, 121.0)
    # The defaults ride out a 30 s PostgreSQL outage with room to spare, and give
    # up within about two minutes.
    least, most = retry_window(RetrySettings())
    assert least >= 1.5 * POSTGRES_DOWN_SECONDS
    assert most <= 120


def test_retry_backoff_must_not_exceed_its_maximum():
    with pytest.raises(ValueError, match="backoff_max"):
        RetrySettings(backoff=60, backoff_max=30)


@dataclass
class OwnStack:
    """A PostgreSQL and a Milvus Lite of this module's own, which its tests stop."""

    database_url: str
    milvus_uri: str
    collection: str
    data_dir: Path
    env: dict[str, str]
    postgres: EmbeddedService | None
    milvus: EmbeddedService | None
    gpu: WorkerProcess
    cpu: WorkerProcess
    app: object
    headers: dict[str, str]
    tenant: str

    def stop_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres = ensure_postgres(self.database_url, self.data_dir / "postgres")

    def stop_milvus(self) -> None:
        assert self.milvus is not None
        self.milvus.stop()

    def kill_milvus(self) -> None:
        """kill -9: no flush, no goodbye to its clients."""
        assert self.milvus is not None
        assert self.milvus.process is not None
        self.milvus.process.kill()
        self.milvus.process.wait()
        self.milvus.stopped = True

    def start_milvus(self) -> None:
        self.milvus = ensure_milvus(self.milvus_uri, self.data_dir / "milvus")


@pytest.fixture(scope="module")
def own_stack(settings: Settings, stack, worker_env, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("outages")
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/convoq"
    milvus_uri = f"http://127.0.0.1:{free_port()}"
    collection = "convoq_test_outages"
    broker_url = settings.redis_url.rsplit("/", 1)[0] + f"/{PrivateDb.OUTAGE}"
    redis.Redis.from_url(broker_url).flushdb()
    postgres = ensure_postgres(database_url, data_dir / "postgres")
    milvus = None
    own: OwnStack | None = None
    workers: list[WorkerProcess] = []
    try:
        milvus = ensure_milvus(milvus_uri, data_dir / "milvus")
        ensure_database(database_url)
        migrate(database_url)
        MemoryStore(milvus_uri, collection).ensure_collection()
        _, key = create_api_key(database_url, "outages", actor="test")
        tenant = str(authenticate(database_url, key).tenant_id)
        env = {
            **worker_env,
            "DATABASE_URL": database_url,
            "REDIS_URL": broker_url,
            "MILVUS_URI": milvus_uri,
            "MILVUS_COLLECTION": collection,
            "MILVUS_TIMEOUT": "3",
        }
        gpu = WorkerProcess(env, data_dir, **GPU_POOL)
        cpu = WorkerProcess(env, data_dir, queue="cpu", pool="prefork", concurrency=2)
        workers = [gpu.start(), cpu.start()]
        app = create_app(
            settings.model_copy(
                update={
                    "database_url": database_url,
                    "redis_url": broker_url,
                    "milvus_uri": milvus_uri,
                    "milvus_collection": collection,
                }
            )
        )
        own = OwnStack(
            database_url, milvus_uri, collection, data_dir, env, postgres, milvus, gpu, cpu, app,
            {"Authorization": f"Bearer {key}"}, tenant,
        )  # fmt: skip
        yield own
    finally:
        for worker in {*workers, *((own.gpu, own.cpu) if own else ())}:
            worker.stop()
        # The servers as the tests left them (restarted ones included); stop() is idempotent.
        for service in (milvus, postgres, *((own.milvus, own.postgres) if own else ())):
            if service is not None:
                service.stop()
        redis.Redis.from_url(broker_url).flushdb()


def conversation(**options: object) -> dict:
    return {
        "conversation_id": f"c-{uuid.uuid4().hex[:8]}",
        "messages": [
            {"role": "user", "content": "My parcel never arrived."},
            {"role": "assistant", "content": "I am sorry; I have sent another."},
        ],
        "summarize": False,
        **options,
    }


class RequestStream:
    """Requests sent one after another from a thread: submits and reads of jobs.

    ``statuses`` counts every answer's status; ``accepted`` holds the ids of
    the jobs answered 202, each with the time it was accepted.
    """

    def __init__(
        self, stack: OwnStack, bodies: list[tuple[str, Callable[[], dict]]], pause: float
    ) -> None:
        self.client = stack.app.test_client()
        self.headers = stack.headers
        self.bodies = bodies
        self.pause = pause
        self.statuses: Counter[int] = Counter()
        self.accepted: dict[str, float] = {}
        self.without_retry_after = 0
        self.codes: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _answer(self, response) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code >= 400:
            self.codes[response.get_json()["error"]["code"]] += 1
        if response.status_code == 503 and not response.headers.get("Retry-After"):
            self.without_retry_after += 1

    def _run(self) -> None:
        turn = 0
        while not self.stopping.is_set():
            path, body = self.bodies[turn % len(self.bodies)]
            turn += 1
            response = self.client.post(path, json=body(), headers=self.headers)
            self._answer(response)
            if response.status_code == 202:
                self.accepted[response.get_json()["id"]] = time.monotonic()
            if self.accepted:
                job_id = next(reversed(self.accepted))
                self._answer(self.client.get(f"/v1/jobs/{job_id}", headers=self.headers))
            self._answer(self.client.get("/v1/jobs", headers=self.headers))
            time.sleep(self.pause)

    def __enter__(self) -> "RequestStream":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(30)


def wait_until_finished(stack: OwnStack, job_ids: list[str], timeout: float) -> dict[str, dict]:
    """The jobs' final rows, once every one of them has finished."""
    client = stack.app.test_client()
    rows: dict[str, dict] = {}

    def all_finished() -> bool:
        for job_id in job_ids:
            if job_id in rows:
                continue
            response = client.get(f"/v1/jobs/{job_id}", headers=stack.headers)
            body = response.get_json()
            if response.status_code == 200 and body["status"] in FINISHED:
                rows[job_id] = body
        return len(rows) == len(job_ids)

    wait_for(all_finished, timeout, f"{len(job_ids)} jobs to finish", interval=0.5)
    return rows


def finished_after(rows: Iterable[dict], since: float) -> tuple[float, float]:
    """Seconds from ``since`` (a time.time()) to the first and the last job that finished
    after it."""
    ends = [datetime.fromisoformat(row["finished_at"]).timestamp() - since for row in rows]
    later = [end for end in ends if end >= 0] or [0.0]
    return min(later), max(later)


def retries_logged(*workers: WorkerProcess) -> int:
    return sum(
        worker.log().count("transient failure; the job will be retried") for worker in workers
    )


def test_postgresql_stopped_30s_under_load_answers_503_and_loses_no_job(own_stack: OwnStack):
    stack = own_stack
    bodies = [
        ("/v1/jobs/embed", lambda: {"texts": ["the parcel never arrived", "a refund"]}),
        ("/v1/jobs/conversation", lambda: conversation(embed=False)),
    ]
    retries_before = retries_logged(stack.gpu, stack.cpu)
    with RequestStream(stack, bodies, pause=0.1) as stream:
        wait_for(lambda: len(stream.accepted) >= 20, 60, "jobs accepted before the outage")
        # A backlog, so that the workers are busy with jobs when the database goes.
        client = stack.app.test_client()
        for turn in range(BACKLOG_JOBS):
            path, body = bodies[turn % 2]
            body = {"texts": LONG_TEXTS} if path.endswith("embed") else body()
            response = client.post(path, json=body, headers=stack.headers)
            assert response.status_code == 202, response.get_json()
            stream.accepted[response.get_json()["id"]] = time.monotonic()
        stopped_at = time.monotonic()
        stack.stop_postgres()
        accepted_before = len(stream.accepted)
        ready = client.get("/readyz")
        time.sleep(max(0.0, POSTGRES_DOWN_SECONDS - (time.monotonic() - stopped_at)))
        stack.start_postgres()
        restarted_at = time.monotonic()
        during = dict(stream.statuses)
        wait_for(
            lambda: any(at > restarted_at for at in stream.accepted.values()),
            60,
            "a job accepted after the outage",
        )
        time.sleep(3)

    job_ids = list(stream.accepted)
    rows = wait_until_finished(stack, job_ids, timeout=120)
    recovered = time.monotonic() - restarted_at
    first, last = finished_after(rows.values(), time.time() - recovered)
    accepted_after = sum(1 for at in stream.accepted.values() if at > restarted_at)
    outcomes = Counter(row["status"] for row in rows.values())
    retries = retries_logged(stack.gpu, stack.cpu) - retries_before
    print(
        f"\nPostgreSQL down {restarted_at - stopped_at:.1f}s: answers {dict(stream.statuses)} "
        f"(at the restart: {during}); jobs accepted {len(job_ids)} "
        f"({accepted_before} before, {accepted_after} after), outcomes {dict(outcomes)}; "
        f"retries logged {retries}; jobs finished {first:.1f}s to {last:.1f}s after the restart"
    )
    assert ready.status_code == 503
    assert "postgresql is down" in ready.get_json()["error"]["message"]
    assert stream.statuses[500] == 0
    assert set(stream.statuses) <= {200, 202, 503}, stream.statuses
    assert stream.statuses[503] > 0, "the outage was never met"
    assert stream.without_retry_after == 0
    assert set(stream.codes) == {"database_unavailable"}
    assert accepted_after > 0
    failed = {job_id: row["error"] for job_id, row in rows.items() if row["status"] != "succeeded"}
    assert not failed
    assert retries > 0, "no worker met the outage"


def test_milvus_killed_during_indexing_loses_no_vector(own_stack: OwnStack):
    stack = own_stack
    store = MemoryStore(stack.milvus_uri, stack.collection)
    vectors_before = store.count(stack.tenant)
    bodies = [("/v1/jobs/conversation", conversation)]  # two messages, two vectors
    retries_before = retries_logged(stack.cpu)
    with RequestStream(stack, bodies, pause=0.2) as stream:
        wait_for(lambda: len(stream.accepted) >= 10, 60, "jobs accepted before the outage")
        stack.kill_milvus()
        time.sleep(MILVUS_DOWN_SECONDS)
        stack.start_milvus()
        restarted_at = time.monotonic()
        wait_for(
            lambda: any(at > restarted_at for at in stream.accepted.values()),
            60,
            "a job accepted after the outage",
        )

    job_ids = list(stream.accepted)
    rows = wait_until_finished(stack, job_ids, timeout=120)
    recovered = time.monotonic() - restarted_at
    first, last = finished_after(rows.values(), time.time() - recovered)
    retries = retries_logged(stack.cpu) - retries_before
    store.close()
    store = MemoryStore(stack.milvus_uri, stack.collection)
    vectors = store.count(stack.tenant) - vectors_before
    print(
        f"\nMilvus killed, down {MILVUS_DOWN_SECONDS}s: jobs {len(job_ids)}, "
        f"outcomes {dict(Counter(row['status'] for row in rows.values()))}; "
        f"retries logged {retries}; vectors {vectors} for {2 * len(job_ids)} messages; "
        f"jobs finished {first:.1f}s to {last:.1f}s after the restart"
    )
    failed = {job_id: row["error"] for job_id, row in rows.items() if row["status"] != "succeeded"}
    assert not failed
    assert sum(row["result"]["indexed"] for row in rows.values()) == 2 * len(job_ids)
    assert vectors == 2 * len(job_ids), "a vector was lost or stored twice"
    assert retries > 0, "no indexing met the outage"


def test_the_cpu_worker_recycles_children_past_its_memory_limit(own_stack: OwnStack):
    """The prefork pool's effective setting, as the running worker reports it."""
    inspect = own_stack.app.extensions["celery"].control.inspect(
        [own_stack.cpu.hostname], timeout=10
    )
    conf = inspect.conf()[own_stack.cpu.hostname]
    assert conf["worker_max_memory_per_child"] == Settings().celery.worker_max_memory_per_child
    assert conf["worker_max_memory_per_child"] == 1024 * 1024  # KiB: 1 GiB, the documented default


def test_a_job_whose_retries_are_spent_fails_with_dependency_unavailable(own_stack: OwnStack):
    """Milvus stays away past the retries (two, a fraction of a second apart): the
    job fails with a clear error rather than waiting for ever. Last of the module:
    it replaces the cpu worker by one with that short policy, and leaves Milvus down."""
    stack = own_stack
    stack.cpu.stop()
    impatient = {
        "RETRY__MAX_RETRIES": "2",
        "RETRY__BACKOFF": "0.2",
        "RETRY__BACKOFF_MAX": "0.5",
        "MILVUS_TIMEOUT": "1",
    }
    stack.cpu = WorkerProcess(
        {**stack.env, **impatient}, stack.data_dir, queue="cpu", pool="prefork"
    ).start()
    stack.stop_milvus()
    client = stack.app.test_client()
    responses = [
        client.post("/v1/jobs/conversation", json=conversation(), headers=stack.headers)
        for _ in range(3)
    ]
    assert [r.status_code for r in responses] == [202] * 3
    rows = wait_until_finished(stack, [r.get_json()["id"] for r in responses], timeout=60)
    for row in rows.values():
        assert row["status"] == "failed"
        assert row["error"]["code"] == "dependency_unavailable"
        assert "through 2 retries" in row["error"]["message"]
        assert "Milvus" in row["error"]["message"]
        assert row["attempts"] == 1, "a retry is not another attempt"
    assert retries_logged(stack.cpu) == 2 * len(rows)


def test_a_batch_gives_up_the_deliveries_whose_retries_are_spent(settings: Settings, stack):
    """``Batch.retry_later`` (the gpu pool's batches cannot use ``Task.retry``:
    celery-batches has none): every delivery goes back on the queue with its retry
    counted, except those whose retries are spent, which are given up; when giving
    up cannot be recorded, they go back too."""
    spent_retries = settings.retry.max_retries
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        celery = create_app(settings.model_copy(update={"redis_url": url})).extensions["celery"]
        broker = redis.Redis.from_url(url)
        deliveries = [delivery(retries) for retries in (0, 3, spent_retries)]
        spent = deliveries[-1].job_id
        given_up: list[list[uuid.UUID]] = []

        def give_up(job_ids: list[uuid.UUID], exc: Exception) -> bool:
            given_up.append(job_ids)
            return True

        batch = Batch(SimpleNamespace(app=celery), deliveries, give_up=give_up)
        batch.retry_later(OperationalError("SELECT 1", {}, Exception("connection refused")))
        assert given_up == [[spent]]
        assert batch.requeued == {str(d.job_id) for d in deliveries[:2]}
        assert sorted(published_retries(broker)) == [1, 4]

        broker.flushdb()
        batch = Batch(SimpleNamespace(app=celery), deliveries, give_up=lambda ids, exc: False)
        batch.retry_later(OperationalError("SELECT 1", {}, Exception("connection refused")))
        assert sorted(published_retries(broker)) == [1, 4, spent_retries + 1]


def delivery(retries: int) -> Delivery:
    job_id = uuid.uuid4()
    args = task_args(JobMessage(job_id=job_id))
    request = SimpleRequest(
        str(job_id), TaskName.EMBED.value, args, {}, {"priority": 6}, "gpu@test", True, None,
        None, {"retries": retries},
    )  # fmt: skip
    return Delivery(request, read_message(args))


def published_retries(broker: redis.Redis) -> list[int]:
    """The ``retries`` header of every message waiting in the gpu queue's lists."""
    queue = TASK_QUEUES[TaskName.EMBED].value
    messages = [
        json.loads(raw) for key in broker.keys(f"{queue}*") for raw in broker.lrange(key, 0, -1)
    ]
    return [message["headers"]["retries"] for message in messages]
