"""Reliability, tested by doing it: kill a prefork child, restart Redis, stop PostgreSQL,
hang a task. Afterwards each job has finished, or failed with a clear error.

kill -9 of whole workers at default settings, and what it must not duplicate,
is in tests/test_recovery.py."""

import uuid

import psutil
import pytest
import redis

from api import create_app
from devstack.services import ensure_redis
from tests.faults import HANG, SLOW, SLOW_PASS
from tests.support import (
    GPU_POOL,
    PrivateDb,
    WorkerProcess,
    free_port,
    submit_embed,
    wait_for,
    wait_for_job,
)
from worker.queues import TaskName

LONG_TEXT = " ".join(f"word{i}" for i in range(300))


@pytest.fixture
def private_broker(settings, stack, worker_env):
    """Redis database 14: its jobs reach only the workers a test starts itself."""
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{PrivateDb.RELIABILITY}"
    redis.Redis.from_url(url).flushdb()
    app = create_app(settings.model_copy(update={"redis_url": url}))
    return app, {**worker_env, "REDIS_URL": url}


def limits(soft: int, hard: int) -> dict[str, str]:
    return {"CELERY__TASK_SOFT_TIME_LIMIT": str(soft), "CELERY__TASK_TIME_LIMIT": str(hard)}


def post_conversation(client, headers, content, **extra):
    body = {
        "conversation_id": f"c-{uuid.uuid4().hex[:8]}",
        "messages": [{"role": "user", "content": content}],
        "summarize": False,
        "embed": False,
        **extra,
    }
    response = client.post("/v1/jobs/conversation", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_lost_prefork_child_is_requeued_at_once(private_broker, headers, tmp_path):
    app, env = private_broker
    client = app.test_client()
    with WorkerProcess(
        env, tmp_path, queue="cpu", pool="prefork", extra_args=("--include", "tests.faults")
    ) as worker:
        job = post_conversation(client, headers, f"store me slowly {SLOW}")
        wait_for_job(client, headers, job["id"], statuses={"running"}, timeout=30)
        (child,) = psutil.Process(worker.pid).children()
        child.kill()
        # task_reject_on_worker_lost: back on the queue now, not after the visibility timeout.
        done = wait_for_job(client, headers, job["id"], timeout=60)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert done["result"]["messages"] == {"first_seq": 1, "last_seq": 1}


def test_soft_time_limit_in_the_gpu_pool_fails_the_job(private_broker, headers, tmp_path):
    app, env = private_broker
    client = app.test_client()
    with WorkerProcess(
        {**env, **limits(1, 30)}, tmp_path, **GPU_POOL, extra_args=("--include", "tests.faults")
    ):
        slow = submit_embed(client, headers, [f"{SLOW_PASS} {LONG_TEXT}"] * 256)
        failed = wait_for_job(client, headers, slow["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "time_limit_exceeded"
        assert failed["result"] is None
        quick = submit_embed(client, headers, ["the worker carries on"])
        assert wait_for_job(client, headers, quick["id"])["status"] == "succeeded"


def test_hard_time_limit_in_the_gpu_pool_fails_the_job_and_ends_the_worker(
    private_broker, headers, tmp_path
):
    app, env = private_broker
    client = app.test_client()
    worker = WorkerProcess(
        {**env, **limits(1, 3)},
        tmp_path,
        queue="gpu",
        pool="solo",
        extra_args=("--include", "tests.faults"),
    ).start()
    try:
        job = submit_embed(client, headers, [HANG])
        failed = wait_for_job(client, headers, job["id"], timeout=30)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "time_limit_exceeded"
        assert worker.process.wait(timeout=10) == 70
    finally:
        worker.stop()


def test_hard_time_limit_in_the_prefork_pool_fails_the_job(private_broker, headers, tmp_path):
    app, env = private_broker
    client = app.test_client()
    with WorkerProcess(
        {**env, **limits(1, 3)},
        tmp_path,
        queue="cpu",
        pool="prefork",
        extra_args=("--include", "tests.faults"),
    ):
        job = post_conversation(client, headers, f"never stored {HANG}")
        failed = wait_for_job(client, headers, job["id"], timeout=30)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "time_limit_exceeded"
        after = post_conversation(client, headers, "a fresh child takes over")
        assert wait_for_job(client, headers, after["id"], timeout=60)["status"] == "succeeded"


def test_a_finished_job_delivered_again_does_not_run(app, client, headers, gpu_worker):
    job_id = submit_embed(client, headers, ["only once"])["id"]
    first = wait_for_job(client, headers, job_id)
    assert first["status"] == "succeeded"
    app.extensions["celery"].send_task(
        TaskName.EMBED.value, args=[{"kind": "job", "job_id": job_id}], task_id=job_id
    )
    wait_for(
        lambda: any(
            "delivery skipped" in line and job_id in line for line in gpu_worker.log().splitlines()
        ),
        30,
        "the second delivery to be skipped",
    )
    again = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
    assert again == first


def test_redis_restart_and_outage(settings, stack, headers, worker_env, tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    data_dir = tmp_path / "redis"
    server = ensure_redis(url, data_dir)
    assert server is not None
    app = create_app(settings.model_copy(update={"redis_url": url}))
    client = app.test_client()
    env = {**worker_env, "REDIS_URL": url}
    try:
        with WorkerProcess(env, tmp_path, **GPU_POOL):
            before = submit_embed(client, headers, ["before the restart"])
            assert wait_for_job(client, headers, before["id"])["status"] == "succeeded"

            server.stop()
            response = client.post("/v1/jobs/embed", json={"texts": ["x"]}, headers=headers)
            assert response.status_code == 503
            error = response.get_json()["error"]
            assert error["code"] == "broker_unavailable"
            assert response.headers["Retry-After"]
            lost = client.get(f"/v1/jobs/{error['details'][0]['job_id']}", headers=headers)
            assert lost.get_json()["status"] == "failed", "no job is left queued without a task"
            assert lost.get_json()["error"]["code"] == "broker_unavailable"
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "redis" in ready.get_json()["error"]["message"]

            server = ensure_redis(url, data_dir)
            after = submit_embed(client, headers, ["after the restart"])
            assert wait_for_job(client, headers, after["id"], timeout=60)["status"] == "succeeded"

        # Queued while no worker runs, across a restart: the embedded Redis keeps it.
        waiting = submit_embed(client, headers, ["queued across a restart"])
        server.stop()
        server = ensure_redis(url, data_dir)
        with WorkerProcess(env, tmp_path, **GPU_POOL):
            assert wait_for_job(client, headers, waiting["id"])["status"] == "succeeded"
    finally:
        if server is not None:
            server.stop()
