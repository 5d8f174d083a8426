"""Embedding jobs end to end: HTTP → PostgreSQL → Redis → gpu worker → PostgreSQL."""

import json

import numpy as np
import pytest
import redis
from sentence_transformers import SentenceTransformer

from api import create_app
from inference.embedder import default_model_path
from tests.support import (
    GPU_POOL,
    PrivateDb,
    WorkerProcess,
    private_broker,
    queue_length,
    submit_embed,
    wait_for,
    wait_for_job,
)

TEXTS = [
    "How do I reset my password?",
    "The invoice for October is attached.",
    "Grüezi! Wann fährt der nächste Zug nach Bern?",
    "a",
]


@pytest.fixture(scope="module")
def reference_model():
    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


def test_embed_job_full_path(client, headers, gpu_worker, reference_model):
    response = client.post("/v1/jobs/embed", json={"texts": TEXTS}, headers=headers)
    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "queued"
    assert job["progress"] == {"done": 0, "total": len(TEXTS)}
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]

    done = wait_for_job(client, headers, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    assert done["progress"] == {"done": len(TEXTS), "total": len(TEXTS)}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    result = done["result"]
    assert result["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (result["dimensions"], result["count"], result["device"]) == (384, len(TEXTS), "cpu")

    vectors = np.array(result["vectors"], dtype=np.float64)
    assert vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    cosines = np.sum(vectors * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_progress_counts_every_text(client, headers, gpu_worker):
    texts = [f"message number {i} about the weather" for i in range(150)]
    done = wait_for_job(client, headers, submit_embed(client, headers, texts)["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == {"done": 150, "total": 150}
    assert len(done["result"]["vectors"]) == 150


def test_worker_logs_are_json_with_job_id_and_tenant(client, headers, gpu_worker):
    job_id = submit_embed(client, headers, ["log me"])["id"]
    assert wait_for_job(client, headers, job_id)["status"] == "succeeded"
    records = [
        json.loads(line)
        for line in gpu_worker.log().splitlines()
        if line.startswith("{") and job_id in line
    ]
    started = [r for r in records if r.get("message") == "job started"]
    assert started, records
    assert started[0]["job_id"] == job_id
    assert started[0]["tenant"]
    assert {"time", "level", "logger"} <= set(started[0])


def test_cancel_queued_job_never_runs(settings, worker_env, headers, tmp_path):
    with private_broker(settings.redis_url, PrivateDb.OWN_WORKERS) as url:
        client = create_app(settings.model_copy(update={"redis_url": url})).test_client()
        job = submit_embed(client, headers, ["cancel me before I run"])
        response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        assert response.status_code == 200
        assert response.get_json()["status"] == "canceled"
        broker = redis.Redis.from_url(url)
        assert queue_length(broker, "gpu") == 1
        # The message is delivered, and dropped: its row says canceled.
        with WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path, **GPU_POOL) as worker:
            wait_for(lambda: queue_length(broker, "gpu") == 0, 30, "the gpu queue to drain")
            wait_for(
                lambda: "delivery skipped" in worker.log() and job["id"] in worker.log(),
                30,
                "the worker to skip the job",
            )
        final = client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()
    assert final["status"] == "canceled"
    assert (final["attempts"], final["started_at"], final["result"]) == (0, None, None)
    assert final["finished_at"] is not None


def test_cancel_running_job_stops_it(client, headers, gpu_worker):
    long_text = " ".join(f"word{i}" for i in range(300))
    job = submit_embed(client, headers, [long_text] * 256)
    wait_for_job(client, headers, job["id"], statuses={"running"}, timeout=30)
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert response.status_code == 200, response.get_json()
    wait_for(
        lambda: "job canceled while running" in gpu_worker.log(), 60, "the worker to stop the job"
    )
    final = client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()
    assert final["status"] == "canceled"
    assert final["result"] is None
    assert final["progress"]["done"] < 256


def test_cancel_finished_job_is_409(client, headers, gpu_worker):
    job_id = submit_embed(client, headers, ["finish first"])["id"]
    assert wait_for_job(client, headers, job_id)["status"] == "succeeded"
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "job_finished"
    assert error["details"] == [{"status": "succeeded"}]
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()["status"] == "succeeded"


def test_listing_filters_and_cursors(client, make_tenant, gpu_worker):
    headers = make_tenant()
    ids = [submit_embed(client, headers, [f"job {i}"])["id"] for i in range(5)]
    for job_id in ids:
        wait_for_job(client, headers, job_id)

    seen, url = [], "/v1/jobs?limit=2"
    while url:
        page = client.get(url, headers=headers).get_json()
        assert len(page["jobs"]) <= 2
        assert all("result" not in job for job in page["jobs"])
        seen.extend(job["id"] for job in page["jobs"])
        assert page["links"]["next"] is None or page["next_cursor"] in page["links"]["next"]
        url = page["links"]["next"]
    assert seen == list(reversed(ids)), "newest first, each job exactly once"

    succeeded = client.get("/v1/jobs?status=succeeded&type=embed&limit=100", headers=headers)
    assert [job["id"] for job in succeeded.get_json()["jobs"]] == list(reversed(ids))
    queued = client.get("/v1/jobs?status=queued", headers=headers).get_json()
    assert queued == {"jobs": [], "next_cursor": None, "links": {"next": None}}
    other_type = client.get("/v1/jobs?type=summarize", headers=headers).get_json()
    assert other_type["jobs"] == []

    first = client.get("/v1/jobs?limit=3&status=succeeded", headers=headers).get_json()
    assert "status=succeeded" in first["links"]["next"]
    rest = client.get(first["links"]["next"], headers=headers).get_json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == list(reversed(ids))


def test_tenants_cannot_see_each_others_jobs(client, make_tenant, gpu_worker):
    alice, bob = make_tenant(), make_tenant()
    job_id = submit_embed(client, alice, ["alice's secret"])["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bob).status_code == 404
    assert job_id not in [j["id"] for j in client.get("/v1/jobs", headers=bob).get_json()["jobs"]]
    assert wait_for_job(client, alice, job_id)["status"] == "succeeded"
    unknown = client.get(f"/v1/jobs/{job_id}", headers=bob).get_json()
    absent = client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=bob).get_json()
    assert unknown["error"]["code"] == absent["error"]["code"] == "job_not_found"
