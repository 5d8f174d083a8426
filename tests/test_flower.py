"""Flower, as ``make run`` starts it: basic auth on its UI and API, tasks seen from events."""

from collections.abc import Iterator

import pytest
import requests

from tests.support import (
    ROOT,
    metric_value,
    running_flower,
    submit_embed,
    wait_for,
    wait_for_job,
)

CREDENTIALS = ("ops", "s3cret-for-tests")


@pytest.fixture
def flower(worker_env, tmp_path) -> Iterator[str]:
    with running_flower(worker_env, CREDENTIALS, tmp_path / "flower.log") as url:
        yield url


def test_flower_api_needs_credentials(flower):
    for path in ("/api/workers", "/api/tasks", "/"):
        assert requests.get(f"{flower}{path}", timeout=10).status_code == 401
        wrong = requests.get(f"{flower}{path}", auth=("ops", "wrong"), timeout=10)
        assert wrong.status_code == 401
    assert requests.get(f"{flower}/api/tasks", auth=CREDENTIALS, timeout=10).status_code == 200


def test_flower_sees_tasks_and_serves_metrics(flower, client, headers, gpu_worker):
    # Events are broadcast: Flower sees only those sent after it subscribed. The
    # worker's heartbeat events mark it online once Flower receives them.
    def receiving_events() -> bool:
        metrics = requests.get(f"{flower}/metrics", timeout=10).text
        return metric_value(metrics, "flower_worker_online", worker=gpu_worker.hostname) == 1

    wait_for(receiving_events, 30, "Flower to receive the gpu worker's events", interval=0.5)
    job = submit_embed(client, headers, ["seen by flower"])
    assert wait_for_job(client, headers, job["id"])["status"] == "succeeded"

    def embed_tasks() -> list[dict]:
        tasks = requests.get(f"{flower}/api/tasks", auth=CREDENTIALS, timeout=10).json()
        return [t for t in tasks.values() if t["name"] == "tasks.embed.embed"]

    seen = wait_for(embed_tasks, 30, "Flower to list the embed task", interval=0.5)
    assert seen[0]["state"] == "SUCCESS"
    workers = requests.get(f"{flower}/api/workers?refresh=1", auth=CREDENTIALS, timeout=30).json()
    assert gpu_worker.hostname in workers
    metrics = requests.get(f"{flower}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "flower_events_total" in metrics.text
    # Single-process metrics: no sample files were written into the working directory.
    assert list(ROOT.glob("*.db")) == []
