"""Interactive requests never wait behind bulk work, and tenants take turns.

With one tenant's backlog of big embed jobs on the gpu worker, a search and
another tenant's one-text job are served within the next forward passes, not
after the backlog (bounded here; ``bench.interactive`` measures the figures).
"""

import time

import pytest

from tests.support import submit_embed, wait_for_job

BACKLOG_JOBS, BACKLOG_TEXTS = 10, 256


def backlog_text(job: int, i: int) -> str:
    return f"backlog job {job} text {i}: the quarterly report about the river bank moved again"


@pytest.fixture
def backlog(client, make_tenant, gpu_worker, cpu_worker):
    """Tenant A's ten 256-text embed jobs, running; canceled after the test."""
    tenant_a = make_tenant()
    jobs = [
        submit_embed(client, tenant_a, [backlog_text(j, i) for i in range(BACKLOG_TEXTS)])["id"]
        for j in range(BACKLOG_JOBS)
    ]
    wait_for_job(client, tenant_a, jobs[0], statuses={"running"}, timeout=60)
    yield tenant_a, jobs
    for job_id in jobs:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_a)


def test_another_tenants_small_job_is_not_held_behind_a_backlog(client, make_tenant, backlog):
    tenant_b = make_tenant()
    started = time.monotonic()
    job = submit_embed(client, tenant_b, ["tenant b's one text"])
    done = wait_for_job(client, tenant_b, job["id"], timeout=30)
    took = time.monotonic() - started
    assert done["status"] == "succeeded"
    assert took <= 2.0, f"tenant b's job took {took:.2f}s behind the backlog"
    tenant_a, jobs = backlog
    last = client.get(f"/v1/jobs/{jobs[-1]}", headers=tenant_a).get_json()
    assert last["status"] in {"queued", "running"}, "the backlog was still there"


def test_a_search_is_answered_during_a_backlog(client, make_tenant, backlog):
    tenant_b = make_tenant()
    for _ in range(5):
        started = time.monotonic()
        response = client.post(
            "/v1/search", json={"query": "the river bank", "top_k": 3}, headers=tenant_b
        )
        took = time.monotonic() - started
        assert response.status_code == 200, response.get_json()
        assert took <= 1.5, f"a search took {took:.2f}s during the backlog"
