"""Prometheus metrics and ``GET /v1/queues``, read after real jobs ran on real workers."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from api import create_app
from config import Settings
from config.settings import PoolScaling, ScalingSettings
from tests.support import (
    PrivateDb,
    WorkerProcess,
    free_port,
    metric_value,
    private_broker,
    queue_length,
    submit_embed,
    wait_for,
    wait_for_job,
)

# A Redis database no worker listens to: what is published there stays queued.


def scrape(url: str) -> str:
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def api_metrics(client: Any) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def wait_until_idle(broker: redis.Redis, queue: str) -> None:
    """Nothing of ``queue`` waits or is held by a worker (earlier tests' work is done)."""

    def idle() -> bool:
        return queue_length(broker, queue) == 0 and not any(
            f'"{queue}"]'.encode() in entry for entry in broker.hvals("unacked")
        )

    wait_for(idle, 120, f"the {queue} queue to drain", interval=0.2)


@pytest.fixture
def broker(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def idle_settings(settings: Settings) -> Iterator[Settings]:
    """The test settings on a broker database with no worker, and a small gpu rule."""
    scaling = ScalingSettings(
        gpu=PoolScaling(target_per_worker=2, min_replicas=0, max_replicas=3),
        cpu=PoolScaling(target_per_worker=16, min_replicas=1, max_replicas=10),
    )
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        yield settings.model_copy(update={"redis_url": url, "scaling": scaling})


def test_counters_rise_by_the_exact_number_of_jobs(
    client, headers, settings, broker, gpu_worker, cpu_worker
):
    wait_until_idle(broker, "gpu")
    wait_until_idle(broker, "cpu")
    api_before = api_metrics(client)
    gpu_before = scrape(gpu_worker.metrics_url)
    cpu_before = scrape(cpu_worker.metrics_url)

    plain = [submit_embed(client, headers, [f"plain text {i}"]) for i in range(5)]
    stored = [submit_embed(client, headers, [f"kept text {i}"], store=True) for i in range(3)]
    invalid = client.post("/v1/jobs/embed", json={"texts": []}, headers=headers)
    assert invalid.status_code == 422
    for job in plain + stored:
        assert wait_for_job(client, headers, job["id"], timeout=120)["status"] == "succeeded"

    api_after = api_metrics(client)
    gpu_after = scrape(gpu_worker.metrics_url)
    cpu_after = wait_for(
        lambda: (
            text
            if metric_value(text := scrape(cpu_worker.metrics_url), "convoq_jobs_finished_total")
            - metric_value(cpu_before, "convoq_jobs_finished_total")
            >= 3
            else None
        ),
        10,
        "the cpu worker's samples",
    )

    def rise(before: str, after: str, name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    # The API: submissions and HTTP requests, by route template and status.
    assert rise(api_before, api_after, "convoq_jobs_submitted_total", type="embed") == 8
    route = {"method": "POST", "route": "/v1/jobs/embed"}
    assert rise(api_before, api_after, "convoq_http_requests_total", **route, status="202") == 8
    assert rise(api_before, api_after, "convoq_http_requests_total", **route, status="422") == 1
    assert rise(api_before, api_after, "convoq_http_request_duration_seconds_count", **route) == 9

    # The gpu worker (solo) finished the 5 plain jobs and embedded 8 texts in all.
    done = {"type": "embed", "status": "succeeded"}
    assert rise(gpu_before, gpu_after, "convoq_jobs_finished_total", **done) == 5
    assert rise(gpu_before, gpu_after, "convoq_job_latency_seconds_count", **done) == 5
    assert rise(gpu_before, gpu_after, "convoq_job_queue_wait_seconds_count", type="embed") == 8
    batch = {"operation": "embed"}
    assert rise(gpu_before, gpu_after, "convoq_inference_batch_size_sum", **batch) == 8
    passes = rise(gpu_before, gpu_after, "convoq_inference_seconds_count", **batch)
    assert passes == rise(gpu_before, gpu_after, "convoq_inference_batch_size_count", **batch)
    assert 1 <= passes <= 8
    embed_task = {"task": "tasks.embed.embed"}
    assert rise(gpu_before, gpu_after, "convoq_task_duration_seconds_count", **embed_task) >= 1

    # The cpu worker's pool processes (prefork) finished the 3 stored jobs after indexing.
    assert rise(cpu_before, cpu_after, "convoq_jobs_finished_total", **done) == 3
    index_task = {"task": "tasks.memory.index_embed_jobs"}
    assert rise(cpu_before, cpu_after, "convoq_task_duration_seconds_count", **index_task) >= 1


def test_queue_depth_matches_the_broker_with_no_worker_consuming(idle_settings, make_tenant):
    app = create_app(idle_settings)
    client = app.test_client()
    headers = make_tenant()
    jobs = [submit_embed(client, headers, [f"waiting {i}"]) for i in range(7)]
    conversation = client.post(
        "/v1/jobs/conversation",
        json={
            "conversation_id": "c-1",
            "user_id": "u-1",
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers=headers,
    )
    assert conversation.status_code == 202, conversation.get_json()

    broker = redis.Redis.from_url(idle_settings.redis_url)
    assert queue_length(broker, "gpu") == 7
    assert queue_length(broker, "cpu") == 1
    # A real consumer reserves three messages and does not acknowledge them.
    celery = app.extensions["celery"]
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        reserved = [channel.basic_get("gpu", no_ack=False) for _ in range(3)]
        assert all(message is not None for message in reserved)
        assert broker.hlen("unacked") == 3

        metrics = api_metrics(client)
        assert metric_value(metrics, "convoq_queue_depth", queue="gpu", state="waiting") == 4
        assert metric_value(metrics, "convoq_queue_depth", queue="gpu", state="unacked") == 3
        assert metric_value(metrics, "convoq_queue_depth", queue="cpu", state="waiting") == 1
        assert metric_value(metrics, "convoq_queue_depth", queue="cpu", state="unacked") == 0
        assert metric_value(metrics, "convoq_workers", pool="gpu") == 0
        # ceil(7 / 2) = 4, clamped to the maximum of 3.
        assert metric_value(metrics, "convoq_recommended_replicas", pool="gpu") == 3
        assert metric_value(metrics, "convoq_recommended_replicas", pool="cpu") == 1

        started = time.monotonic()
        response = client.get("/v1/queues", headers=headers)
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert elapsed < 1.0
        queues = response.get_json()["queues"]
        assert queues["gpu"] == {
            "waiting": 4,
            "unacked": 3,
            "depth": 7,
            "workers": 0,
            "recommended_replicas": 3,
            "scaling": {"target_per_worker": 2, "min_replicas": 0, "max_replicas": 3},
        }
        assert queues["cpu"]["depth"] == 1
        assert queues["cpu"]["recommended_replicas"] == 1
    assert len(jobs) == 7


def test_queues_need_an_api_key(client):
    assert client.get("/v1/queues").status_code == 401
    assert client.get("/metrics").status_code == 200


def test_queues_answer_503_fast_when_redis_is_down(settings, make_tenant):
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    client = create_app(down).test_client()
    started = time.monotonic()
    response = client.get("/v1/queues", headers=make_tenant())
    assert time.monotonic() - started < 2.0
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "broker_unavailable"
    # /metrics still answers, without inventing a depth of zero.
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "convoq_queue_depth" not in metrics


def test_workers_are_counted_while_alive_and_dropped_when_stopped_or_killed(
    idle_settings, make_tenant, worker_env, worker_log_dir
):
    client = create_app(idle_settings).test_client()
    headers = make_tenant()

    def workers(pool: str) -> int:
        return client.get("/v1/queues", headers=headers).get_json()["queues"][pool]["workers"]

    assert workers("cpu") == 0
    env = {**worker_env, "REDIS_URL": idle_settings.redis_url, "WORKER_HEARTBEAT_SECONDS": "1"}
    stopped = WorkerProcess(env, worker_log_dir, queue="cpu", pool="prefork").start()
    killed = WorkerProcess(env, worker_log_dir, queue="cpu", pool="prefork").start()
    try:
        wait_for(lambda: workers("cpu") == 2, 10, "both workers' heartbeats")
        assert workers("gpu") == 0
        for worker in (stopped, killed):
            scrape(worker.metrics_url)  # each serves its own metrics while it runs
        stopped.stop()
        assert workers("cpu") == 1  # a clean stop leaves at once
        killed.kill()
        # kill -9 says nothing: the worker drops out after three missed heartbeats.
        wait_for(lambda: workers("cpu") == 0, 5, "the killed worker to drop out")
    finally:
        stopped.stop()
        killed.kill()


def test_a_canceled_job_is_counted_once(idle_settings, make_tenant):
    client = create_app(idle_settings).test_client()
    headers = make_tenant()
    job = submit_embed(client, headers, ["never runs"])
    before = api_metrics(client)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 409
    after = api_metrics(client)
    canceled = {"type": "embed", "status": "canceled"}
    for name in ("convoq_jobs_finished_total", "convoq_job_latency_seconds_count"):
        assert metric_value(after, name, **canceled) - metric_value(before, name, **canceled) == 1
