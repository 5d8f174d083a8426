"""Idempotency-Key on the submit routes, and conversation messages with client ids."""

import threading
import uuid

import pytest
from sqlalchemy import text

from models.db import transaction
from services.idempotency import purge_expired_idempotency_keys
from tests.support import wait_for_job

EMBED = {"texts": ["How do I reset my password?"]}


def submit(client, headers, key, body=EMBED, route="/v1/jobs/embed"):
    return client.post(route, json=body, headers={**headers, "Idempotency-Key": key})


def job_count(settings, headers_tenant_job_id) -> int:
    with transaction(settings.database_url) as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM jobs"
                " WHERE tenant_id = (SELECT tenant_id FROM jobs WHERE id = :id)"
            ),
            {"id": headers_tenant_job_id},
        ).scalar()


def test_same_key_same_body_returns_the_original_job(client, headers, settings):
    key = str(uuid.uuid4())
    first = submit(client, headers, key)
    assert first.status_code == 202
    again = submit(client, headers, key)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert job_count(settings, first.get_json()["id"]) == 1


def test_same_key_other_body_is_409_naming_the_key(client, headers):
    key = "retry-" + uuid.uuid4().hex
    assert submit(client, headers, key).status_code == 202
    response = submit(client, headers, key, {"texts": ["something else"]})
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert key in error["message"]
    # Another route with the key is another request too.
    other = submit(client, headers, key, {"text": "A text."}, route="/v1/jobs/summarize")
    assert other.status_code == 409


def test_keys_are_per_tenant(client, make_tenant):
    alice, bob = make_tenant(), make_tenant()
    key = "shared-key"
    a, b = submit(client, alice, key), submit(client, bob, key)
    assert a.status_code == b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"]


def test_a_batch_replays_all_its_jobs_in_order(client, headers):
    body = {"jobs": [{"type": "embed", "texts": ["a"]}, {"type": "summarize", "text": "B."}]}
    first = submit(client, headers, "batch-1", body, route="/v1/jobs/batch")
    again = submit(client, headers, "batch-1", body, route="/v1/jobs/batch")
    assert (first.status_code, again.status_code) == (202, 200)
    ids = [job["id"] for job in first.get_json()["jobs"]]
    assert [job["id"] for job in again.get_json()["jobs"]] == ids


def test_concurrent_requests_with_one_key_make_one_job(app, headers, settings):
    key = "race-" + uuid.uuid4().hex
    answers = []

    def post() -> None:
        answers.append(submit(app.test_client(), headers, key))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answer.status_code for answer in answers) == [200] * 5 + [202]
    assert len({answer.get_json()["id"] for answer in answers}) == 1
    assert job_count(settings, answers[0].get_json()["id"]) == 1


def test_expired_keys_are_reusable_and_purged(client, headers, settings):
    key = "expiring-" + uuid.uuid4().hex
    first = submit(client, headers, key).get_json()["id"]
    with transaction(settings.database_url) as connection:
        connection.execute(
            text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
                " WHERE key = :k"
            ),
            {"k": key},
        )
    second = submit(client, headers, key)
    assert second.status_code == 202
    assert second.get_json()["id"] != first
    with transaction(settings.database_url) as connection:
        connection.execute(
            text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
                " WHERE key = :k"
            ),
            {"k": key},
        )
    assert purge_expired_idempotency_keys(settings.database_url) >= 1
    with transaction(settings.database_url) as connection:
        left = connection.execute(
            text("SELECT count(*) FROM idempotency_keys WHERE key = :k"), {"k": key}
        ).scalar()
    assert left == 0


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * 256])
def test_a_malformed_key_is_422(client, headers, key):
    response = submit(client, headers, key)
    assert response.status_code == 422, response.get_json()
    assert "Idempotency-Key" in response.get_json()["error"]["message"]


def test_no_key_makes_a_job_each_time(client, headers):
    ids = {
        client.post("/v1/jobs/embed", json=EMBED, headers=headers).get_json()["id"]
        for _ in range(2)
    }
    assert len(ids) == 2


@pytest.mark.timeout(120)
def test_a_message_posted_twice_is_stored_once(client, headers, cpu_worker):
    conversation = "conv-" + uuid.uuid4().hex
    hello = {"id": "m1", "role": "user", "content": "Hello, my order is late."}
    reply = {"id": "m2", "role": "assistant", "content": "It ships tomorrow."}

    def post(messages):
        body = {
            "conversation_id": conversation,
            "messages": messages,
            "summarize": False,
            "embed": False,
        }
        response = client.post("/v1/jobs/conversation", json=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        return wait_for_job(client, headers, response.get_json()["id"], timeout=60)

    assert post([hello])["status"] == "succeeded"
    # A retry of the first post, with the reply: only the reply is new.
    assert post([hello, reply])["status"] == "succeeded"
    # Nothing new at all: the job ends without storing anything.
    again = post([hello, reply])
    assert again["status"] == "succeeded"
    assert again["result"]["messages"] == {"first_seq": None, "last_seq": None}
    view = client.get(f"/v1/conversations/{conversation}", headers=headers).get_json()
    assert [m["content"] for m in view["messages"]] == [hello["content"], reply["content"]]
    assert [m["seq"] for m in view["messages"]] == [1, 2]
