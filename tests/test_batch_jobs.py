"""``POST /v1/jobs/batch``: many jobs of any type, all checked before any is accepted."""

import time

import pytest
from sqlalchemy import func, select

from api import create_app
from models import Job
from models.db import transaction
from services.tenants import authenticate
from tests.support import FINISHED, PrivateDb, private_broker


@pytest.fixture
def idle_client(settings, stack):
    """A client of an API whose jobs no worker runs."""
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        yield create_app(settings.model_copy(update={"redis_url": url})).test_client()


def jobs_of(settings, headers) -> int:
    """How many jobs the headers' tenant has, read from the database."""
    principal = authenticate(settings.database_url, headers["Authorization"].split()[1])
    with transaction(settings.database_url) as connection:
        return connection.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == principal.tenant_id)
        )


def embed(*texts, **extra):
    return {"type": "embed", "texts": list(texts), **extra}


def summarize(text="The invoice is due on Friday. Pay it by then. Thanks.", **extra):
    return {"type": "summarize", "text": text, "method": "extractive", **extra}


def conversation(conversation_id, user_id=None, **extra):
    return {
        "type": "conversation",
        "conversation_id": conversation_id,
        "user_id": user_id,
        "messages": [
            {"role": "user", "content": "My order has not arrived."},
            {"role": "assistant", "content": "I am sorry; let me check the tracking number."},
        ],
        **extra,
    }


def post_batch(client, headers, jobs, **kwargs):
    return client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers, **kwargs)


def error_fields(response) -> list[str]:
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    return [detail["field"] for detail in error["details"]]


def test_batch_answers_202_with_the_jobs_in_order(idle_client, headers):
    jobs = [
        embed("a"),
        summarize(),
        embed("b", "c", "d"),
        conversation("batch-order"),
        embed("e", "f"),
    ]
    response = post_batch(idle_client, headers, jobs)
    assert response.status_code == 202, response.get_json()
    assert response.headers["Vary"] == "Prefer"
    out = response.get_json()["jobs"]
    assert [job["type"] for job in out] == ["embed", "summarize", "embed", "conversation", "embed"]
    assert [job["progress"]["total"] for job in out] == [1, 1, 3, 4, 2]
    assert {job["status"] for job in out} == {"queued"}
    assert len({job["id"] for job in out}) == 5
    for job in out:
        assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
        got = idle_client.get(job["links"]["self"], headers=headers).get_json()
        assert (got["id"], got["type"]) == (job["id"], job["type"])


def test_one_bad_job_refuses_the_whole_batch_naming_its_index(idle_client, headers, settings):
    before = jobs_of(settings, headers)
    jobs = [embed("a"), summarize(), embed("b"), {"type": "embed", "texts": []}, embed("c")]
    response = post_batch(idle_client, headers, jobs)
    assert error_fields(response) == ["jobs.3.texts"]
    assert "jobs.3.texts" in response.get_json()["error"]["message"]
    assert jobs_of(settings, headers) == before


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"type": "embed", "texts": ["a"], "surprise": 1}, "jobs.1.surprise"),
        ({"type": "embed", "texts": ["a" * 32_001]}, "jobs.1.texts.0"),
        ({"type": "embed", "texts": ["a"], "encoding_format": "hex"}, "jobs.1.encoding_format"),
        ({"type": "summarize", "text": " "}, "jobs.1.text"),
        ({"type": "conversation", "conversation_id": "c", "messages": []}, "jobs.1.messages"),
        (
            {"type": "conversation", "conversation_id": "c", "messages": [{"role": "x"}]},
            "jobs.1.messages.0.role",
        ),
        (
            {
                "type": "conversation",
                "conversation_id": "c",
                "embed": "yes",
                "messages": [{"role": "user", "content": "hi"}],
            },
            "jobs.1.embed",
        ),
        ({"type": "translate", "text": "a"}, "jobs.1.type"),
        ({"texts": ["a"]}, "jobs.1.type"),
        ({"type": 5}, "jobs.1.type"),
        ("embed", "jobs.1"),
        (None, "jobs.1"),
    ],
)
def test_invalid_jobs_are_named_by_index_and_field(idle_client, headers, item, field):
    response = post_batch(idle_client, headers, [embed("ok"), item])
    fields = error_fields(response)
    assert field in fields, fields


def test_every_bad_job_is_named(idle_client, headers, settings):
    """The schema's errors first, all of them; then, with none, every job's checks."""
    before = jobs_of(settings, headers)
    jobs = [
        {"type": "embed", "texts": []},
        embed("ok"),
        {"type": "summarize"},
        summarize(method="t5"),
    ]
    assert error_fields(post_batch(idle_client, headers, jobs)) == ["jobs.0.texts", "jobs.2.text"]
    jobs = [summarize(method="t5"), embed("ok"), conversation("batch-every", "u1", method="t5")]
    fields = error_fields(post_batch(idle_client, headers, jobs))
    assert fields == ["jobs.0.method", "jobs.2.method"]
    assert jobs_of(settings, headers) == before


def test_t5_without_a_t5_model_is_refused_by_index(idle_client, headers):
    """The per-job check of the summarize route, here for each job of the batch."""
    jobs = [summarize(), conversation("batch-t5", method="t5")]
    response = post_batch(idle_client, headers, jobs)
    assert error_fields(response) == ["jobs.1.method"]
    assert "SUMMARIZER_MODEL_PATH" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(("count", "status"), [(100, 202), (101, 422), (0, 422)])
def test_at_most_100_jobs(idle_client, headers, settings, count, status):
    before = jobs_of(settings, headers)
    response = post_batch(idle_client, headers, [embed(f"t{i}") for i in range(count)])
    assert response.status_code == status
    if status == 422:
        assert error_fields(response) == ["jobs"]
        assert jobs_of(settings, headers) == before
    else:
        assert len(response.get_json()["jobs"]) == count
        assert jobs_of(settings, headers) == before + count


@pytest.mark.parametrize("body", [{}, {"jobs": {}}, {"jobs": "embed"}, {"jobs": [], "x": 1}])
def test_a_body_without_a_list_of_jobs_is_422(idle_client, headers, body):
    response = idle_client.post("/v1/jobs/batch", json=body, headers=headers)
    assert response.status_code == 422


def test_two_users_for_one_new_conversation_are_refused(idle_client, headers, settings):
    before = jobs_of(settings, headers)
    jobs = [
        conversation("batch-owner", "u1"),
        conversation("batch-owner"),
        conversation("batch-owner", "u2"),
    ]
    response = post_batch(idle_client, headers, jobs)
    assert error_fields(response) == ["jobs.2.user_id"]
    assert jobs_of(settings, headers) == before


def test_batch_jobs_belong_to_the_callers_tenant(idle_client, headers, make_tenant):
    out = post_batch(idle_client, headers, [embed("a"), summarize()]).get_json()["jobs"]
    other = make_tenant()
    for job in out:
        assert idle_client.get(job["links"]["self"], headers=other).status_code == 404
        assert idle_client.post(job["links"]["self"] + "/cancel", headers=other).status_code == 404
        assert idle_client.get(job["links"]["self"], headers=headers).status_code == 200
    assert idle_client.get("/v1/jobs", headers=other).get_json()["jobs"] == []


def test_batch_needs_a_key(idle_client):
    assert post_batch(idle_client, {}, [embed("a")]).status_code == 401


def test_batch_with_a_wait_that_runs_out_answers_202(idle_client, headers):
    started = time.perf_counter()
    response = idle_client.post(
        "/v1/jobs/batch",
        json={"jobs": [embed("a"), embed("b")]},
        headers={**headers, "Prefer": "wait=1"},
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 202
    assert 0.95 <= elapsed < 5, elapsed
    assert response.headers["Preference-Applied"] == "wait=1"
    assert [job["status"] for job in response.get_json()["jobs"]] == ["queued", "queued"]


# -- with real workers -------------------------------------------------------------------


def finish(client, headers, jobs, timeout=120):
    """Each job's final state, long-polling those that are not final yet."""
    deadline = time.monotonic() + timeout
    done = []
    for job in jobs:
        while job["status"] not in FINISHED and time.monotonic() < deadline:
            job = client.get(f"{job['links']['self']}?wait=30", headers=headers).get_json()
        done.append(job)
    return done


@pytest.mark.timeout(300)
def test_mixed_types_all_succeed_with_real_workers(client, headers, gpu_worker, cpu_worker):
    jobs = [
        embed("How do I reset my password?"),
        summarize(),
        conversation("batch-mixed", "u1"),
        embed("one", "two", "three", encoding_format="base64"),
        summarize("Short text. With two sentences.", method="auto"),
    ]
    response = client.post(
        "/v1/jobs/batch", json={"jobs": jobs}, headers={**headers, "Prefer": "wait=60"}
    )
    assert response.status_code in {200, 202}, response.get_json()
    assert response.headers["Preference-Applied"] == "wait=60"
    out = finish(client, headers, response.get_json()["jobs"])
    assert [job["status"] for job in out] == ["succeeded"] * 5, [job["error"] for job in out]
    assert [job["type"] for job in out] == [item["type"] for item in jobs]
    assert len(out[0]["result"]["vectors"]) == 1
    assert [isinstance(v, str) for v in out[3]["result"]["vectors"]] == [True] * 3
    assert out[1]["result"]["text"]
    # The conversation now belongs to u1: another user in a batch is refused by index.
    refused = client.post(
        "/v1/jobs/batch",
        json={"jobs": [embed("x"), conversation("batch-mixed", "u2")]},
        headers=headers,
    )
    assert error_fields(refused) == ["jobs.1.user_id"]
    assert post_batch(client, headers, [conversation("batch-mixed", "u1")]).status_code == 202


def test_batch_wait_answers_200_once_all_ended(client, headers, gpu_worker):
    response = client.post(
        "/v1/jobs/batch",
        json={"jobs": [embed("a"), embed("b", "c"), summarize()]},
        headers={**headers, "Prefer": "wait=60"},
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["Preference-Applied"] == "wait=60"
    out = response.get_json()["jobs"]
    assert [job["status"] for job in out] == ["succeeded"] * 3
    assert [len(job["result"]["vectors"]) for job in out[:2]] == [1, 2]
