"""Conversation memory end to end: summaries, the conversation pipeline, Milvus and search,
through the API and real gpu and cpu workers."""

import uuid

import pytest

from tests.support import submit_embed, wait_for_job

SUPPORT_CHAT = [
    {"role": "user", "content": "I forgot my password and cannot log in to my account."},
    {"role": "assistant", "content": "Use the reset link on the sign-in page to set a new one."},
    {"role": "user", "content": "My invoice for October shows the wrong billing address."},
    {"role": "assistant", "content": "I have corrected the address; a new invoice is on its way."},
    {"role": "user", "content": "The parcel with my new headphones has not arrived yet."},
    {"role": "assistant", "content": "The courier says it will be delivered tomorrow morning."},
    {"role": "user", "content": "Can I move my subscription to the annual plan?"},
    {"role": "system", "content": "The customer is on the monthly premium plan."},
]
QUERIES = {
    "how do I reset my password": SUPPORT_CHAT[0]["content"],
    "billing address wrong on the invoice": SUPPORT_CHAT[2]["content"],
    "where is my package delivery": SUPPORT_CHAT[4]["content"],
    "switch to yearly subscription": SUPPORT_CHAT[6]["content"],
}


def post_conversation(client, headers, conversation_id, messages, **extra):
    body = {"conversation_id": conversation_id, "messages": messages, **extra}
    response = client.post("/v1/jobs/conversation", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def search(client, headers, query, **body):
    response = client.post("/v1/search", json={"query": query, **body}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["hits"]


@pytest.fixture
def workers(gpu_worker, cpu_worker):
    return gpu_worker, cpu_worker


def test_conversation_pipeline_stores_summarises_and_indexes(
    client, headers, workers, memory_store
):
    conversation_id = f"chat-{uuid.uuid4().hex[:8]}"
    job = post_conversation(client, headers, conversation_id, SUPPORT_CHAT, user_id="u-1")
    assert job["type"] == "conversation"
    assert job["progress"] == {"done": 0, "total": 4}
    done = wait_for_job(client, headers, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == {"done": 4, "total": 4}
    result = done["result"]
    assert result["messages"] == {"first_seq": 1, "last_seq": len(SUPPORT_CHAT)}
    assert result["summary"]["method"] == "extractive"
    assert result["indexed"] == len(SUPPORT_CHAT) + 1

    view = client.get(f"/v1/conversations/{conversation_id}", headers=headers).get_json()
    assert view["status"] == "succeeded"
    assert view["user_id"] == "u-1"
    assert [m["seq"] for m in view["messages"]] == list(range(1, len(SUPPORT_CHAT) + 1))
    assert [m["content"] for m in view["messages"]] == [m["content"] for m in SUPPORT_CHAT]
    assert view["summary"]["upto_seq"] == len(SUPPORT_CHAT)
    assert view["summary"]["text"]
    assert view["summary"]["method"] == "extractive"
    assert view["last_job"]["self"] == f"/v1/jobs/{job['id']}"

    tenant = memory_store_tenant(client, headers)
    assert memory_store.count(tenant, conversation_id=conversation_id, kind="message") == len(
        SUPPORT_CHAT
    )
    assert memory_store.count(tenant, conversation_id=conversation_id, kind="summary") == 1


def memory_store_tenant(client, headers) -> str:
    """The tenant id behind ``headers``, read from one of its jobs."""
    from services.tenants import authenticate

    settings = client.application.extensions["convoq.settings"]
    principal = authenticate(settings.database_url, headers["Authorization"].split()[1])
    return str(principal.tenant_id)


def test_posting_again_appends_and_resummarises(client, headers, workers, memory_store):
    conversation_id = f"chat-{uuid.uuid4().hex[:8]}"
    first = post_conversation(client, headers, conversation_id, SUPPORT_CHAT[:4])
    assert wait_for_job(client, headers, first["id"], timeout=120)["status"] == "succeeded"
    second = post_conversation(client, headers, conversation_id, SUPPORT_CHAT[4:])
    done = wait_for_job(client, headers, second["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["messages"] == {"first_seq": 5, "last_seq": 8}

    view = client.get(f"/v1/conversations/{conversation_id}", headers=headers).get_json()
    assert [m["seq"] for m in view["messages"]] == list(range(1, 9))
    assert view["summary"]["upto_seq"] == 8
    tenant = memory_store_tenant(client, headers)
    assert memory_store.count(tenant, conversation_id=conversation_id, kind="message") == 8
    # The newer summary replaced the older one in the index.
    assert memory_store.count(tenant, conversation_id=conversation_id, kind="summary") == 1

    page = client.get(
        f"/v1/conversations/{conversation_id}?after_seq=2&limit=3", headers=headers
    ).get_json()
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5]
    assert page["next_after_seq"] == 5


def test_search_finds_each_intended_message_first(client, make_tenant, workers):
    headers, other = make_tenant(), make_tenant()
    mine = post_conversation(client, headers, "support-1", SUPPORT_CHAT, user_id="alice")
    theirs = post_conversation(
        client,
        other,
        "support-1",
        [{"role": "user", "content": "How do I reset my password? I forgot it."}],
        user_id="bob",
    )
    for job, who in ((mine, headers), (theirs, other)):
        assert wait_for_job(client, who, job["id"], timeout=120)["status"] == "succeeded"

    for query, expected in QUERIES.items():
        hits = search(client, headers, query, top_k=5)
        assert hits[0]["text"] == expected, (query, hits)
        assert hits[0]["kind"] == "message"
        assert hits[0]["conversation_id"] == "support-1"
        assert hits[0]["user_id"] == "alice"
        assert 0 < hits[0]["score"] <= 1.0001
        assert all(hit["user_id"] == "alice" for hit in hits), "tenant B's vectors leaked"

    their_hits = search(client, other, "how do I reset my password", top_k=100)
    assert {hit["user_id"] for hit in their_hits} == {"bob"}
    assert not search(client, other, "password", filter={"user_id": "alice"})
    summaries = search(client, headers, "customer support", filter={"kind": "summary"})
    assert [hit["kind"] for hit in summaries] == ["summary"]


def test_embed_job_with_store_is_searchable(client, headers, workers, memory_store):
    texts = ["The quarterly report is due next Monday.", "Our cat likes to sleep on the sofa."]
    job = submit_embed(client, headers, texts, store=True, user_id="carol")
    done = wait_for_job(client, headers, job["id"], timeout=60)
    assert done["status"] == "succeeded", done["error"]
    assert len(done["result"]["stored"]["ids"]) == 2
    assert len(done["result"]["vectors"]) == 2
    tenant = memory_store_tenant(client, headers)
    assert memory_store.count(tenant, kind="text", user_id="carol") == 2
    hits = search(client, headers, "where does the kitten nap", filter={"kind": "text"})
    assert hits[0]["text"] == texts[1]


def test_summarize_job_auto_picks_extractive_without_t5(client, headers, workers):
    text = (
        "The city council met on Tuesday to discuss the new bicycle lanes. "
        "Most members supported building lanes on the main avenues. "
        "A few members worried about the loss of parking spaces. "
        "The council will vote on the bicycle lane plan next month."
    )
    response = client.post(
        "/v1/jobs/summarize",
        json={"text": text, "max_length": 30, "min_length": 5},
        headers=headers,
    )
    assert response.status_code == 202, response.get_json()
    done = wait_for_job(client, headers, response.get_json()["id"], timeout=60)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["method"] == "extractive"
    assert result["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert 0 < result["output_tokens"] <= 30
    sentences = [f"{s.strip().rstrip('.')}." for s in result["text"].split(". ")]
    assert sentences
    assert all(sentence in text for sentence in sentences), result["text"]


def test_summarize_job_auto_picks_t5_when_configured(app_with_t5, make_tenant, workers):
    client, headers = app_with_t5.test_client(), make_tenant()
    texts = ["summarize this short note about the weather today. it was sunny and warm."] * 3
    ids = []
    for text in texts:
        response = client.post(
            "/v1/jobs/summarize",
            json={"text": text, "max_length": 12, "min_length": 4},
            headers=headers,
        )
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    results = [wait_for_job(client, headers, job_id, timeout=60) for job_id in ids]
    for done in results:
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["method"] == "t5"
        assert (
            done["result"]["model"]
            == app_with_t5.extensions["convoq.settings"].summarizer_model_path.name
        )
        assert 4 <= done["result"]["output_tokens"] <= 12
    # Greedy decoding: the same text gives the same summary, batched or not.
    assert len({done["result"]["text"] for done in results}) == 1


def test_asking_for_t5_without_a_model_is_422(client, headers):
    response = client.post(
        "/v1/jobs/summarize", json={"text": "Some text.", "method": "t5"}, headers=headers
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["details"][0]["field"] == "method"
    assert "SUMMARIZER_MODEL_PATH" in error["message"]
