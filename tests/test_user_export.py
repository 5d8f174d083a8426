"""GET /v1/users/<id>/export: every message and summary of the user comes back, streamed
from pages of bounded size, and each export is audited without the text."""

import json
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select

from api.export import CHUNK_BYTES, export_document
from models import AuditLog, Conversation, Summary
from models.db import get_engine, session_scope
from services.export import user_records
from services.tenants import authenticate
from tests.support import wait_for_job

USER = "u-export"
FIRST = [
    {"id": "m1", "role": "user", "content": "My parcel to Bern has not arrived."},
    {"id": "m2", "role": "assistant", "content": "It left the depot this morning."},
]
SECOND = [
    {"role": "user", "content": "It is here now, but the box is damaged."},
    {"role": "assistant", "content": "I am sorry; a replacement is on its way."},
]
OTHER = [{"role": "user", "content": "Please change my delivery address to Basel."}]
OTHER_USERS = [{"role": "user", "content": "Another user's words: never in this export."}]


def _post(client, headers, conversation_id, messages, user_id):
    body = {"conversation_id": conversation_id, "user_id": user_id, "messages": messages}
    response = client.post("/v1/jobs/conversation", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.fixture(scope="module")
def posted(app, make_tenant, gpu_worker, cpu_worker, settings):
    """Two conversations of USER (one posted twice: two summaries), one of another user,
    and an embed job naming USER; all finished."""
    client, headers = app.test_client(), make_tenant()
    first, second = f"exp-{uuid.uuid4().hex[:8]}", f"exp-{uuid.uuid4().hex[:8]}"
    job_ids = [_post(client, headers, first, FIRST, USER)]
    assert wait_for_job(client, headers, job_ids[0], timeout=120)["status"] == "succeeded"
    job_ids.append(_post(client, headers, first, SECOND, None))  # user_id from the first post
    job_ids.append(_post(client, headers, second, OTHER, USER))
    other_job = _post(client, headers, f"exp-{uuid.uuid4().hex[:8]}", OTHER_USERS, "u-else")
    embed = client.post(
        "/v1/jobs/embed", json={"texts": ["a note about USER"], "user_id": USER}, headers=headers
    )
    job_ids.append(embed.get_json()["id"])
    for job_id in [*job_ids, other_job]:
        assert wait_for_job(client, headers, job_id, timeout=120)["status"] == "succeeded"
    tenant_id = authenticate(settings.database_url, headers["Authorization"][7:]).tenant_id
    return SimpleNamespace(
        client=client,
        headers=headers,
        tenant_id=tenant_id,
        conversations={first: FIRST + SECOND, second: OTHER},
        job_ids=job_ids,
    )


def _export(posted, user_id=USER):
    response = posted.client.get(f"/v1/users/{user_id}/export", headers=posted.headers)
    assert response.status_code == 200
    # A generator's output, sent as it is made: no length is known up front.
    assert response.is_streamed
    assert "Content-Length" not in response.headers
    response.get_data()  # read to the end: a client that leaves early is "interrupted"
    return response


def test_an_export_round_trips_every_message_and_summary(posted, settings):
    response = _export(posted)
    assert response.headers["Cache-Control"] == "no-store"
    document = json.loads(response.data)
    assert document["user_id"] == USER
    exported = {c["conversation_id"]: c for c in document["conversations"]}
    assert set(exported) == set(posted.conversations), "only the user's conversations"
    for conversation_id, messages in posted.conversations.items():
        conversation = exported[conversation_id]
        assert conversation["user_id"] == USER
        got = [(m["seq"], m["role"], m["content"], m["id"]) for m in conversation["messages"]]
        sent = [(seq, m["role"], m["content"], m.get("id")) for seq, m in enumerate(messages, 1)]
        assert got == sent
    with session_scope(settings.database_url) as session:
        stored = session.execute(
            select(Conversation.external_id, Summary.upto_seq, Summary.text, Summary.method)
            .join(Conversation, Conversation.id == Summary.conversation_id)
            .where(Conversation.tenant_id == posted.tenant_id, Conversation.user_id == USER)
        ).all()
    summaries = {
        (conversation_id, s["upto_seq"], s["text"], s["method"])
        for conversation_id, conversation in exported.items()
        for s in conversation["summaries"]
    }
    assert summaries == {tuple(row) for row in stored}
    assert len(exported[next(iter(posted.conversations))]["summaries"]) == 2, "every summary"
    jobs = {job["id"]: job for job in document["jobs"]}
    assert set(jobs) == set(posted.job_ids), "the user's jobs, not the other user's"
    assert [job["created_at"] for job in document["jobs"]] == sorted(
        job["created_at"] for job in document["jobs"]
    )
    embed = jobs[posted.job_ids[-1]]
    assert embed["params"]["texts"] == ["a note about USER"]
    assert (embed["status"], embed["result"]["dimensions"]) == ("succeeded", 384)


def test_each_export_is_audited_without_its_text(posted, settings):
    _export(posted)
    with session_scope(settings.database_url) as session:
        entries = session.scalars(
            select(AuditLog)
            .where(AuditLog.tenant_id == posted.tenant_id, AuditLog.action == "user.export")
            .order_by(AuditLog.id.desc())
            .limit(2)
        ).all()
    done, started = entries
    assert (started.target_type, started.target_id) == ("user", USER)
    assert started.actor.startswith("cvq_")
    assert started.actor == done.actor
    assert started.details["outcome"] == "started"
    assert done.details == {
        "outcome": "completed",
        "export_id": started.details["export_id"],
        "conversations": 2,
        "messages": 5,
        "summaries": 3,
        "jobs": 4,
    }
    listed = posted.client.get("/v1/audit?action=user.export&limit=1", headers=posted.headers)
    assert listed.get_json()["entries"][0]["details"]["outcome"] == "completed"
    texts = [m["content"] for messages in posted.conversations.values() for m in messages]
    logged = json.dumps([entry.details for entry in entries])
    assert not any(text in logged for text in texts)


def test_every_query_reads_one_page_and_the_document_comes_in_chunks(posted, settings):
    """Memory stays bounded: no statement returns more than a page of rows, and the
    writer sends a chunk as soon as it holds CHUNK_BYTES, before reading further."""
    fetched = []

    def count_rows(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            fetched.append(cursor.rowcount)

    engine = get_engine(settings.database_url)
    event.listen(engine, "after_cursor_execute", count_rows)
    try:
        records = list(user_records(settings.database_url, posted.tenant_id, USER, page_rows=2))
    finally:
        event.remove(engine, "after_cursor_execute", count_rows)
    assert max(fetched) <= 2
    assert len(fetched) >= 8, "pages of conversations, messages, summaries and jobs"
    paged = json.loads(b"".join(export_document(USER, iter(records), {})))
    whole = json.loads(_export(posted).data)
    paged.pop("exported_at"), whole.pop("exported_at")
    assert paged == whole

    read = 0

    def many_messages():
        nonlocal read
        yield (
            "conversation",
            SimpleNamespace(external_id="c", user_id=USER, created_at=None, updated_at=None),
        )
        for seq in range(1, 5001):
            read += 1
            yield (
                "message",
                SimpleNamespace(
                    seq=seq, role="user", content="x" * 100, client_id=None, created_at=None
                ),
            )

    chunks = export_document(USER, many_messages(), {})
    first = next(chunks)
    assert CHUNK_BYTES <= len(first) < CHUNK_BYTES + 200
    assert read < 1000, "the first chunk was sent before the rest was read"
    rest = list(chunks)
    assert max(map(len, rest)) < CHUNK_BYTES + 200
    assert len(json.loads(first + b"".join(rest))["conversations"][0]["messages"]) == 5000


def test_a_user_with_nothing_stored_gets_an_empty_export(posted):
    document = json.loads(_export(posted, "nobody-here").data)
    assert (document["conversations"], document["jobs"]) == ([], [])
    bad = posted.client.get("/v1/users/no%20spaces/export", headers=posted.headers)
    assert bad.status_code == 422
    assert bad.get_json()["error"]["code"] == "validation_error"
