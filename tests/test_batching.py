"""Cross-job batching on the gpu pool: many small jobs, few forward passes, each its own answer."""

import numpy as np
import pytest
import redis
import requests
from sentence_transformers import SentenceTransformer

from api import create_app
from inference.embedder import default_model_path
from tests.support import (
    GPU_POOL,
    PrivateDb,
    WorkerProcess,
    metric_value,
    private_broker,
    submit_embed,
    wait_for,
    wait_for_job,
)


@pytest.fixture(scope="module")
def reference_model():
    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


def passes_and_texts(worker) -> tuple[float, float]:
    exposition = requests.get(worker.metrics_url, timeout=5).text
    labels = {"operation": "embed"}
    return (
        metric_value(exposition, "convoq_inference_batch_size_count", **labels),
        metric_value(exposition, "convoq_inference_batch_size_sum", **labels),
    )


def test_fifty_one_text_jobs_share_forward_passes(
    settings, worker_env, headers, tmp_path, reference_model
):
    texts = [f"note {i}: the meeting about topic {i * 7 % 13} moved to room {i}" for i in range(50)]
    with private_broker(settings.redis_url, PrivateDb.OWN_WORKERS) as url:
        client = create_app(settings.model_copy(update={"redis_url": url})).test_client()
        # Queued while no gpu worker runs: the worker that starts reserves them all at once.
        jobs = [submit_embed(client, headers, [text])["id"] for text in texts]
        with WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path, **GPU_POOL) as worker:
            results = [wait_for_job(client, headers, job_id, timeout=120) for job_id in jobs]
            passes, served = passes_and_texts(worker)
            # A batch acknowledges its messages together: none is left behind.
            broker = redis.Redis.from_url(url)
            wait_for(lambda: broker.hlen("unacked") == 0, 10, "the messages to be acknowledged")
            assert broker.zcard("unacked_index") == 0

    assert all(done["status"] == "succeeded" for done in results)
    assert served >= 50
    # The worker's own warm-up ran a few passes; the fifty needed only a handful.
    assert passes <= 3 + 5, passes

    vectors = np.array([done["result"]["vectors"][0] for done in results])
    expected = reference_model.encode(texts, normalize_embeddings=True)
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.min() >= 0.9999, "a job got another job's vector"


def test_a_malformed_request_is_dropped_and_the_batch_goes_on(app, client, headers, gpu_worker):
    celery = app.extensions["celery"]
    for args in (["not a dict"], [{"kind": "nonsense"}], [], [{"kind": "job"}, 2]):
        celery.send_task("tasks.embed.embed", args=args)
    job = submit_embed(client, headers, ["still served"])
    assert wait_for_job(client, headers, job["id"])["status"] == "succeeded"
    dropped = [
        line for line in gpu_worker.log().splitlines() if "malformed request dropped" in line
    ]
    assert len(dropped) >= 4
