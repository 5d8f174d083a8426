"""Cross-job batching on the gpu pool: many small jobs, few forward passes, each its own answer."""

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from inference.batching import plan_forward_passes
from inference.embedder import default_model_path
from tests.support import gpu_busy, submit_embed, wait_for_job


def test_passes_hold_at_most_the_texts_and_tokens_allowed():
    counts = [5, 300, 12, 12, 40, 7, 7, 7, 250, 1]
    passes = plan_forward_passes(counts, max_texts=3, max_tokens=100)
    assert sorted(i for p in passes for i in p) == list(range(len(counts)))
    for indices in passes:
        longest = max(counts[i] for i in indices)
        assert len(indices) <= 3
        assert len(indices) == 1 or longest * len(indices) <= 100
    # Longest first: the two long texts each get a pass of their own.
    assert passes[:2] == [[1], [8]]


def test_short_texts_fill_a_pass_up_to_max_texts():
    passes = plan_forward_passes([10] * 130, max_texts=64, max_tokens=10_000)
    assert [len(p) for p in passes] == [64, 64, 2]


def batch_log_lines(log: str) -> list[dict]:
    return [
        record
        for line in log.splitlines()
        if line.startswith("{")
        and (record := json.loads(line)).get("message") == "embedding batch done"
    ]


@pytest.fixture(scope="module")
def reference_model():
    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


def test_fifty_one_text_jobs_share_forward_passes(
    app, client, headers, gpu_worker, reference_model
):
    texts = [f"note {i}: the meeting about topic {i * 7 % 13} moved to room {i}" for i in range(50)]
    # Whatever earlier tests left queued is served before this job: the worker is idle after.
    idle = submit_embed(client, headers, ["the queue is drained"])
    assert wait_for_job(client, headers, idle["id"])["status"] == "succeeded"
    batches_before = len(batch_log_lines(gpu_worker.log()))
    with gpu_busy(client, headers):
        jobs = [submit_embed(client, headers, [text])["id"] for text in texts]
    results = [wait_for_job(client, headers, job_id, timeout=60) for job_id in jobs]

    assert all(done["status"] == "succeeded" for done in results)
    blocker, *batches = batch_log_lines(gpu_worker.log())[batches_before:]
    assert blocker["texts"] == 256
    assert sum(b["texts"] for b in batches) == 50
    passes = sum(b["forward_passes"] for b in batches)
    assert passes <= 10, batches

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
