"""Bad input to the conversation, summarize and search routes: a clear 4xx, never a 5xx."""

import uuid

import pytest
import redis

from api import create_app
from tests.support import PrivateDb, wait_for_job
from tests.test_api_errors import error_of

MESSAGE = {"role": "user", "content": "hello"}


def post(client, headers, path, body):
    return client.post(path, json=body, headers=headers)


def field_error(response, field: str) -> dict:
    error = error_of(response, 422)
    assert error["code"] == "validation_error"
    assert any(detail.get("field", "").startswith(field) for detail in error["details"]), error
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"conversation_id": "c", "messages": [MESSAGE] * 1001}, "messages"),
        ({"conversation_id": "c", "messages": []}, "messages"),
        ({"conversation_id": "c", "messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ({"conversation_id": "c", "messages": [{"role": "user", "content": ""}]}, "messages"),
        ({"conversation_id": "c", "messages": [{"role": "user", "content": " \n\t"}]}, "messages"),
        ({"conversation_id": "c", "messages": [{"role": "user"}]}, "messages"),
        ({"conversation_id": "c", "messages": [{**MESSAGE, "extra": 1}]}, "messages"),
        ({"conversation_id": "c", "messages": "hello"}, "messages"),
        ({"messages": [MESSAGE]}, "conversation_id"),
        ({"conversation_id": "", "messages": [MESSAGE]}, "conversation_id"),
        ({"conversation_id": "a b", "messages": [MESSAGE]}, "conversation_id"),
        ({"conversation_id": 'x" or 1==1', "messages": [MESSAGE]}, "conversation_id"),
        ({"conversation_id": "c" * 256, "messages": [MESSAGE]}, "conversation_id"),
        ({"conversation_id": "c", "user_id": "../etc", "messages": [MESSAGE]}, "user_id"),
        ({"conversation_id": "c", "messages": [MESSAGE], "summarize": "yes"}, "summarize"),
        ({"conversation_id": "c", "messages": [MESSAGE], "method": "gpt"}, "method"),
    ],
)
def test_bad_conversation_jobs_are_422(client, headers, body, field):
    field_error(post(client, headers, "/v1/jobs/conversation", body), field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 32_001}, "text"),
        ({"text": "ok", "max_length": 0}, "max_length"),
        ({"text": "ok", "max_length": 5000}, "max_length"),
        ({"text": "ok", "min_length": -1}, "min_length"),
        ({"text": "ok", "max_length": "10"}, "max_length"),
        ({"text": "ok", "method": "abstractive"}, "method"),
    ],
)
def test_bad_summarize_jobs_are_422(client, headers, body, field):
    field_error(post(client, headers, "/v1/jobs/summarize", body), field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "top_k": 101}, "top_k"),
        ({"query": "x", "top_k": 1.5}, "top_k"),
        ({"query": "x", "filter": {"tenant": "other"}}, "filter"),
        ({"query": "x", "filter": {"colour": "red"}}, "filter"),
        ({"query": "x", "filter": {"kind": "secret"}}, "filter"),
        ({"query": "x", "filter": {"user_id": 'a" or tenant != "'}}, "filter"),
        ({"query": "x", "filter": "user_id == 1"}, "filter"),
        ({"query": "x", "extra": True}, "extra"),
    ],
)
def test_bad_searches_are_422(client, headers, body, field):
    field_error(post(client, headers, "/v1/search", body), field)


def test_search_and_new_jobs_need_a_key_and_json(client, headers):
    for path in ("/v1/search", "/v1/jobs/conversation", "/v1/jobs/summarize"):
        assert error_of(client.post(path, json={}), 401)["code"] == "unauthorized"
        response = client.post(path, data="{", content_type="application/json", headers=headers)
        assert response.status_code == 400
        response = client.post(path, data="x", content_type="text/plain", headers=headers)
        assert response.status_code == 415


def test_unknown_conversation_and_another_tenants_are_404(client, make_tenant, cpu_worker):
    owner, stranger = make_tenant(), make_tenant()
    body = {"conversation_id": "mine", "messages": [MESSAGE], "summarize": False, "embed": False}
    response = post(client, owner, "/v1/jobs/conversation", body)
    assert response.status_code == 202
    assert wait_for_job(client, owner, response.get_json()["id"])["status"] == "succeeded"
    assert client.get("/v1/conversations/mine", headers=owner).status_code == 200
    for conversation_id in ("mine", "nope", "x" * 300, "%00"):
        response = client.get(f"/v1/conversations/{conversation_id}", headers=stranger)
        assert error_of(response, 404)["code"] == "conversation_not_found"
    for query in ("limit=0", "limit=1001", "after_seq=-1", "colour=red"):
        response = client.get(f"/v1/conversations/mine?{query}", headers=owner)
        assert response.status_code == 422, query


def test_posting_as_another_user_of_a_conversation_is_409(client, headers, cpu_worker):
    body = {
        "conversation_id": f"c-{uuid.uuid4().hex[:6]}",
        "user_id": "ann",
        "messages": [MESSAGE],
        "summarize": False,
        "embed": False,
    }
    first = post(client, headers, "/v1/jobs/conversation", body)
    assert wait_for_job(client, headers, first.get_json()["id"])["status"] == "succeeded"
    response = post(client, headers, "/v1/jobs/conversation", {**body, "user_id": "ben"})
    assert error_of(response, 409)["code"] == "conversation_user_mismatch"
    assert (
        post(client, headers, "/v1/jobs/conversation", {**body, "user_id": "ann"}).status_code
        == 202
    )


def test_search_without_a_gpu_worker_is_504(settings, stack, headers):
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{PrivateDb.IDLE}"
    redis.Redis.from_url(url).flushdb()
    app = create_app(settings.model_copy(update={"redis_url": url, "search_embed_timeout": 1.0}))
    response = app.test_client().post(
        "/v1/search", json={"query": "anyone there?"}, headers=headers
    )
    error = error_of(response, 504)
    assert error["code"] == "query_embedding_timeout"
    assert "1s" in error["message"]
