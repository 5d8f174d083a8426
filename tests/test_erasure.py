"""Erasure (the right to be forgotten), against real PostgreSQL, Milvus, Redis and workers.

One set-up for the module: a tenant whose user has data in every store
(conversation jobs with summaries and vectors, embed jobs with ``store``), beside
another user of the same tenant and the same user id in another tenant, which
must come through untouched. The races are played out twice: with the real
workers (an erasure while the user's jobs are mid-pipeline), and step by step
in this process, where each interleaving is forced.
"""

import dataclasses
import json
import threading
import time
import uuid

import pytest
import redis
from kombu.transport.redis import Channel
from sqlalchemy import select, text

from api import create_app
from config import Settings
from models import Job, Message, Summary
from models.db import transaction
from models.job import JobType
from services import erasure
from services.conversations import ConversationStore
from services.dispatch import publish
from services.gpu_rpc import lane_key
from services.jobs import JobStore, NewJob
from services.notify import finished_notifier
from services.tenants import authenticate
from tests.support import PrivateDb, private_broker, queue_length, wait_for, wait_for_job
from vectorstore import MemoryKind, MemoryRecord, memory_id
from worker.messages import SearchRequest, StepMessage
from worker.queues import TaskName

POOL = Settings().database_pool_size
# Every text of the erased user carries this, so any copy of it left anywhere is found.
MARK = f"zq{uuid.uuid4().hex[:10]}"


def chat(topic: str, count: int = 4, mark: str = "") -> list[dict[str, str]]:
    lines = [
        f"{mark} my {topic} order arrived damaged and I would like a refund.",
        f"{mark} I am sorry about the {topic}; a refund is on its way to your card.",
        f"{mark} Can you also change the delivery address for the next {topic}?",
        f"{mark} Done: the next {topic} goes to your new address on Baker Street.",
    ]
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": lines[i % 4].strip()}
        for i in range(count)
    ]


def post_conversation(client, headers, conversation_id, messages, **extra):
    body = {"conversation_id": conversation_id, "messages": messages, **extra}
    response = client.post("/v1/jobs/conversation", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def post_embed(client, headers, texts, **extra):
    body = {"texts": texts, "store": True, **extra}
    response = client.post("/v1/jobs/embed", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def tenant_of(settings, headers) -> str:
    return str(authenticate(settings.database_url, headers["Authorization"][7:]).tenant_id)


def erase(client, headers, path):
    response = client.delete(path, headers=headers)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/erasures/{body['id']}"
    assert body["links"]["self"] == response.headers["Location"]
    return body


def wait_for_erasure(client, headers, erasure_id, timeout=60):
    def ended():
        body = client.get(f"/v1/erasures/{erasure_id}", headers=headers).get_json()
        return body if body["status"] in ("succeeded", "failed") else None

    return wait_for(ended, timeout, f"erasure {erasure_id} to end", interval=0.1)


def pg_rows(settings, tenant, *, user_id=None, conversation_ids=()):
    """Rows left in PostgreSQL that belong to the user or conversations, by table."""
    conversation_ids = list(conversation_ids)
    with transaction(settings.database_url) as connection:

        def count(sql):
            return connection.execute(
                text(sql), {"t": tenant, "u": user_id, "c": conversation_ids}
            ).scalar_one()

        owned = (
            "SELECT id FROM conversations WHERE tenant_id = :t "
            "AND (user_id = :u OR external_id = ANY(:c))"
        )
        return {
            "conversations": count(f"SELECT count(*) FROM ({owned}) o"),
            "messages": count(f"SELECT count(*) FROM messages WHERE conversation_id IN ({owned})"),
            "summaries": count(
                f"SELECT count(*) FROM summaries WHERE conversation_id IN ({owned})"
            ),
            "jobs": count(
                "SELECT count(*) FROM jobs WHERE tenant_id = :t AND (params->>'user_id' = :u "
                "OR params->>'conversation_id' = ANY(:c))"
            ),
        }


def redis_holding(client: redis.Redis, needles) -> list[str]:
    """The keys whose name or value holds any of ``needles``."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [*client.hkeys(key), *client.hvals(key)]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        else:
            values = []
        blob = b"\n".join([key, *[v or b"" for v in values]])
        if any(needle.encode() in blob for needle in needles):
            found.append(key.decode(errors="replace"))
    return found


def audit_rows(settings, tenant, action, target_id):
    with transaction(settings.database_url) as connection:
        return connection.execute(
            text(
                "SELECT actor, details FROM audit_log WHERE tenant_id = :t AND action = :a "
                "AND target_id = :id ORDER BY id"
            ),
            {"t": tenant, "a": action, "id": target_id},
        ).all()


def search_hits(client, headers, query, **filters):
    body = {"query": query, "top_k": 100, "filter": filters}
    response = client.post("/v1/search", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["hits"]


@pytest.fixture(scope="module")
def world(app, make_tenant, settings, gpu_worker, cpu_worker, memory_store):
    """Tenant A: user ``alice`` (erased), ``bob`` (kept), ``wendy`` (one conversation
    erased); tenant B: another ``alice`` (kept). Every job has succeeded."""
    client = app.test_client()
    a, b = make_tenant(), make_tenant()
    w = {"client": client, "a": a, "b": b, "tenant_a": tenant_of(settings, a)}
    w["tenant_b"] = tenant_of(settings, b)
    w["alice"], w["bob"], w["wendy"] = (f"{name}-{uuid.uuid4().hex[:6]}" for name in "abw")
    alice, bob, wendy = w["alice"], w["bob"], w["wendy"]
    w["alice_chats"] = [f"{alice}-c1", f"{alice}-c2"]
    c1, c2 = w["alice_chats"]
    jobs = [
        (a, post_conversation(client, a, c1, chat("tea", mark=MARK), user_id=alice)),
        # c2's first post names no user: its vectors carry none, and are erased
        # as the vectors of one of her conversations once a later post makes it hers.
        (a, post_conversation(client, a, c2, chat("lamp", 2, MARK))),
        (a, post_embed(client, a, [f"{MARK} alice's own note about the lamp"], user_id=alice)),
        (a, post_embed(client, a, [f"{MARK} a note filed under c1"], conversation_id=c1)),
        (a, post_conversation(client, a, f"{bob}-c1", [{"role": "user", "content": "Hi"}])),
        (a, post_embed(client, a, ["bob's note on the kettle"], user_id=bob)),
        (a, post_conversation(client, a, f"{wendy}-c1", chat("sofa"), user_id=wendy)),
        (a, post_conversation(client, a, f"{wendy}-c2", chat("rug"), user_id=wendy)),
        (b, post_conversation(client, b, c1, chat("tea"), user_id=alice)),
    ]
    for headers, job_id in jobs:
        assert wait_for_job(client, headers, job_id, timeout=120)["status"] == "succeeded"
    later = post_conversation(client, a, c2, chat("lamp", 2, MARK), user_id=alice)
    assert wait_for_job(client, a, later, timeout=120)["status"] == "succeeded"
    post = post_conversation(client, a, f"{bob}-c1", chat("kettle", 1), user_id=bob)
    assert wait_for_job(client, a, post, timeout=120)["status"] == "succeeded"
    w["alice_jobs"] = [job_id for _, job_id in jobs[:4]] + [later]
    return w


def test_erasing_a_user_leaves_nothing_of_theirs_in_any_store(world, settings, memory_store):
    client, a, b = world["client"], world["a"], world["b"]
    tenant, alice, chats = world["tenant_a"], world["alice"], world["alice_chats"]
    before = pg_rows(settings, tenant, user_id=alice, conversation_ids=chats)
    assert before == {"conversations": 2, "messages": 8, "summaries": 3, "jobs": 5}
    vectors = (
        memory_store.count(tenant, user_id=alice)
        + memory_store.count(tenant, conversation_ids=chats)
        - memory_store.count(tenant, user_id=alice, conversation_ids=chats)
    )
    # c2's first two messages went in without a user: only a user-wide erasure finds them.
    assert vectors > memory_store.count(tenant, user_id=alice)
    kept = {
        "bob": memory_store.count(tenant, user_id=world["bob"]),
        "wendy": memory_store.count(tenant, user_id=world["wendy"]),
        "b": memory_store.count(world["tenant_b"], user_id=alice),
    }
    assert all(kept.values()), kept

    accepted = erase(client, a, f"/v1/users/{alice}")
    assert accepted["status"] == "pending"
    assert (accepted["target"], accepted["target_id"]) == ("user", alice)
    done = wait_for_erasure(client, a, accepted["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 1
    assert done["started_at"]
    assert done["finished_at"]
    assert done["removed"] == {
        "postgresql": {**before, "jobs_canceled": 0},
        "milvus": {"vectors": vectors},
        "redis": {"search_requests": 0},
    }

    assert pg_rows(settings, tenant, user_id=alice, conversation_ids=chats) == dict.fromkeys(
        before, 0
    )
    with transaction(settings.database_url) as connection:
        # Text is encrypted at rest: read through the mapped columns, decrypted.
        stored = [
            *connection.scalars(select(Message.content)),
            *connection.scalars(select(Summary.text)),
            *(
                f"{params} {result}"
                for params, result in connection.execute(
                    select(Job.params, Job.result).where(Job.tenant_id == uuid.UUID(tenant))
                )
            ),
        ]
        erasure_leftovers = connection.execute(
            text(
                "SELECT count(*) FROM erasures WHERE tenant_id = :t"
                "    AND (removed::text LIKE :m OR error LIKE :m)"
            ),
            {"m": f"%{MARK}%", "t": tenant},
        ).scalar_one()
    assert [value for value in stored if MARK in value] == []
    assert erasure_leftovers == 0
    assert memory_store.count(tenant, user_id=alice) == 0
    assert memory_store.count(tenant, conversation_ids=chats) == 0
    assert redis_holding(redis.Redis.from_url(settings.redis_url), [alice, MARK]) == []
    for job_id in world["alice_jobs"]:
        assert client.get(f"/v1/jobs/{job_id}", headers=a).status_code == 404
    assert client.get(f"/v1/conversations/{chats[0]}", headers=a).status_code == 404

    hits = search_hits(client, a, "my tea order arrived damaged, refund")
    assert hits, "the tenant's other users are still searchable"
    assert not [h for h in hits if h["user_id"] == alice or MARK in h["text"]]
    assert search_hits(client, a, "refund for the lamp", user_id=alice) == []

    rows = audit_rows(settings, tenant, "user.erase", alice)
    assert [row.details["outcome"] for row in rows] == ["requested", "succeeded"]
    assert {row.details["erasure_id"] for row in rows} == {accepted["id"]}
    assert rows[1].details["removed"] == done["removed"]
    prefix = a["Authorization"][7:19]
    assert {row.actor for row in rows} == {prefix}
    assert MARK not in json.dumps([row.details for row in rows])

    # Everyone else's data is where it was.
    assert memory_store.count(tenant, user_id=world["bob"]) == kept["bob"]
    assert memory_store.count(tenant, user_id=world["wendy"]) == kept["wendy"]
    assert memory_store.count(world["tenant_b"], user_id=alice) == kept["b"]
    theirs = client.get(f"/v1/conversations/{chats[0]}", headers=b).get_json()
    assert theirs["user_id"] == alice
    assert len(theirs["messages"]) == 4
    assert search_hits(client, b, "tea order refund", user_id=alice)


def test_erasing_again_finds_nothing(world, settings):
    client, a = world["client"], world["a"]
    first = audit_rows(settings, world["tenant_a"], "user.erase", world["alice"])
    again = erase(client, a, f"/v1/users/{world['alice']}")
    assert again["id"] not in {row.details["erasure_id"] for row in first}
    done = wait_for_erasure(client, a, again["id"])
    assert done["status"] == "succeeded"
    assert all(count == 0 for store in done["removed"].values() for count in store.values())


def test_erasing_a_conversation_leaves_the_users_other_conversations(world, settings, memory_store):
    client, a = world["client"], world["a"]
    tenant, wendy = world["tenant_a"], world["wendy"]
    gone, kept = f"{wendy}-c1", f"{wendy}-c2"
    kept_vectors = memory_store.count(tenant, conversation_id=kept)
    assert memory_store.count(tenant, conversation_id=gone) == 5  # 4 messages and a summary

    accepted = erase(client, a, f"/v1/conversations/{gone}")
    assert accepted["target"] == "conversation"
    done = wait_for_erasure(client, a, accepted["id"])
    assert done["status"] == "succeeded"
    assert done["removed"]["postgresql"] == {
        "conversations": 1,
        "messages": 4,
        "summaries": 1,
        "jobs": 1,
        "jobs_canceled": 0,
    }
    assert done["removed"]["milvus"] == {"vectors": 5}
    assert memory_store.count(tenant, conversation_id=gone) == 0
    assert pg_rows(settings, tenant, conversation_ids=[gone]) == dict.fromkeys(
        ("conversations", "messages", "summaries", "jobs"), 0
    )
    assert client.get(f"/v1/conversations/{gone}", headers=a).status_code == 404
    assert client.get(f"/v1/conversations/{kept}", headers=a).status_code == 200
    assert memory_store.count(tenant, conversation_id=kept) == kept_vectors
    rows = audit_rows(settings, tenant, "conversation.erase", gone)
    assert [row.details["outcome"] for row in rows] == ["requested", "succeeded"]


def test_ids_are_checked_and_erasures_are_private(world):
    client, a, b = world["client"], world["a"], world["b"]
    for bad in ("-starts-with-a-dash", "x" * 256, "sp%20ace"):
        for route in ("users", "conversations"):
            response = client.delete(f"/v1/{route}/{bad}", headers=a)
            assert response.status_code == 422, (route, bad)
            assert response.get_json()["error"]["code"] == "validation_error"
    assert client.delete(f"/v1/users/{world['bob']}").status_code == 401
    # Nothing was ever stored under it: erased all the same, without saying so.
    nobody = erase(client, a, f"/v1/conversations/never-{uuid.uuid4().hex[:6]}")
    assert client.get(f"/v1/erasures/{nobody['id']}", headers=b).status_code == 404
    missing = client.get(f"/v1/erasures/{uuid.uuid4()}", headers=a)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "erasure_not_found"
    assert client.get("/v1/erasures/not-a-uuid", headers=a).status_code == 404
    assert wait_for_erasure(client, a, nobody["id"])["removed"]["milvus"] == {"vectors": 0}


def test_an_erasure_while_the_users_jobs_run_leaves_nothing_behind(world, settings, memory_store):
    """The real race: the user's jobs are queued, persisting, summarising and indexing
    when the erasure comes; once it has succeeded nothing of theirs is left, and
    nothing comes back once every job's messages have drained from the broker."""
    client, a = world["client"], world["a"]
    tenant, user = world["tenant_a"], f"rita-{uuid.uuid4().hex[:6]}"
    chats = [f"{user}-c{i}" for i in range(3)]
    jobs = [post_conversation(client, a, c, chat("kite", 40, MARK), user_id=user) for c in chats]
    jobs.append(post_embed(client, a, [f"{MARK} kite {i}" for i in range(64)], user_id=user))
    wait_for(
        lambda: any(
            client.get(f"/v1/jobs/{job_id}", headers=a).get_json()["status"] == "running"
            for job_id in jobs
        ),
        30,
        "one of the user's jobs to run",
        interval=0.02,
    )
    accepted = erase(client, a, f"/v1/users/{user}")
    done = wait_for_erasure(client, a, accepted["id"], timeout=90)
    assert done["status"] == "succeeded", done
    assert done["removed"]["postgresql"]["jobs_canceled"] >= 1

    def nothing_left() -> None:
        assert pg_rows(settings, tenant, user_id=user, conversation_ids=chats) == {
            "conversations": 0,
            "messages": 0,
            "summaries": 0,
            "jobs": 0,
        }
        assert memory_store.count(tenant, user_id=user) == 0
        assert memory_store.count(tenant, conversation_ids=chats) == 0

    nothing_left()
    underway = erasure.broker_underway(
        redis.Redis.from_url(settings.redis_url), settings.worker_heartbeat_seconds
    )
    job_ids = [uuid.UUID(job_id) for job_id in jobs]
    wait_for(lambda: not underway(job_ids), 60, "the jobs' messages to drain")
    nothing_left()


# -- each interleaving forced, in this process, on an idle broker ---------------


@pytest.fixture
def idle(settings, stack, make_tenant):
    """An API and erasure stores on a broker no worker consumes, and a tenant."""
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        client = redis.Redis.from_url(url)
        headers = make_tenant()
        stores = erasure.Stores(
            database_url=settings.database_url,
            memory=None,
            redis=client,
            redis_url=url,
            jobs=JobStore(settings.database_url, notify=finished_notifier(url)),
            still_underway=erasure.broker_underway(client, settings.worker_heartbeat_seconds),
        )
        yield {
            "app": app,
            "http": app.test_client(),
            "redis": client,
            "url": url,
            "headers": headers,
            "tenant": uuid.UUID(tenant_of(settings, headers)),
            "stores": stores,
        }


@pytest.fixture
def idle_stores(idle, memory_store):
    return dataclasses.replace(idle["stores"], memory=memory_store)


def running_conversation_job(settings, tenant, user, conversation_id):
    """A conversation job of ``user`` that a worker has started (not yet persisted)."""
    store = JobStore(settings.database_url)
    params = {
        "conversation_id": conversation_id,
        "user_id": user,
        "messages": chat("hat", 2),
        "summarize": True,
        "embed": True,
        "method": "extractive",
        "requested_method": "auto",
        "max_length": 50,
        "min_length": 5,
    }
    (job,) = store.submit_many(
        tenant, [NewJob(JobType.CONVERSATION, params, 4)], publish=lambda jobs: None
    )
    return store.start(job.id, max_attempts=3)


def test_a_second_request_while_one_is_underway_gets_the_same_erasure(idle, settings):
    http, headers = idle["http"], idle["headers"]
    first = erase(http, headers, "/v1/users/pat")
    # Enough times for psycopg to prepare the statement on every pooled connection.
    again = {erase(http, headers, "/v1/users/pat")["id"] for _ in range(6 * POOL)}
    assert again == {first["id"]}
    rows = audit_rows(settings, idle["tenant"], "user.erase", "pat")
    assert [row.details["new"] for row in rows] == [True] + [False] * 6 * POOL
    # Sent once; the sweep sends it again only once no run has taken it up for a while.
    assert queue_length(idle["redis"], "cpu") == 1
    assert erasure.stalled_erasures(settings.database_url, quiet_for=3600, limit=10) == []
    with transaction(settings.database_url) as connection:
        connection.execute(
            text("UPDATE erasures SET claimed_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": first["id"]},
        )
    assert erasure.stalled_erasures(settings.database_url, quiet_for=60, limit=10) == [
        uuid.UUID(first["id"])
    ]
    assert erasure.stalled_erasures(settings.database_url, quiet_for=60, limit=10) == []


def test_a_persist_after_the_erasure_stores_nothing(idle_stores, idle, settings):
    user = f"paul-{uuid.uuid4().hex[:6]}"
    job = running_conversation_job(settings, idle["tenant"], user, f"{user}-c")
    requested = erasure.request_erasure(
        settings.database_url, idle["tenant"], erasure.ErasureTarget.USER, user, actor="test"
    )
    done = erasure.run(idle_stores, requested.erasure.id)
    assert done.removed["postgresql"]["jobs_canceled"] == 1
    assert ConversationStore(settings.database_url).persist(job) is None
    assert pg_rows(settings, idle["tenant"], user_id=user)["conversations"] == 0


def test_a_persist_that_started_first_is_waited_for_and_erased(idle_stores, idle, settings):
    """Persist holds its job's row: the erasure's cancel waits for its commit, then
    deletes what it stored. (A raw lock stands in for the erasure here, the other way
    round: persist waits, then finds its job canceled.)"""
    user = f"petra-{uuid.uuid4().hex[:6]}"
    job = running_conversation_job(settings, idle["tenant"], user, f"{user}-c")
    outcome = {}
    with transaction(settings.database_url) as connection:
        connection.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job.id})
        persist = threading.Thread(
            target=lambda: outcome.update(
                seqs=ConversationStore(settings.database_url).persist(job)
            )
        )
        persist.start()
        time.sleep(0.5)
        assert persist.is_alive(), "persist did not wait for the job's row"
        connection.execute(
            text("UPDATE jobs SET status = 'canceled' WHERE id = :id"), {"id": job.id}
        )
    persist.join(10)
    assert outcome == {"seqs": None}
    assert pg_rows(settings, idle["tenant"], user_id=user)["conversations"] == 0

    job = running_conversation_job(settings, idle["tenant"], user, f"{user}-c")
    requested = erasure.request_erasure(
        settings.database_url, idle["tenant"], erasure.ErasureTarget.USER, user, actor="test"
    )
    with transaction(settings.database_url) as connection:
        # What persist holds while it writes: the row, share-locked, and its messages.
        connection.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR SHARE"), {"id": job.id})
        run = threading.Thread(
            target=lambda: outcome.update(done=erasure.run(idle_stores, requested.erasure.id))
        )
        run.start()
        assert ConversationStore(settings.database_url).persist(job) == (1, 2)
        time.sleep(0.5)
        assert run.is_alive(), "the erasure did not wait for the persist step"
    run.join(10)
    assert outcome["done"].removed["postgresql"]["messages"] == 2
    assert pg_rows(settings, idle["tenant"], user_id=user)["conversations"] == 0


def test_the_erasure_waits_for_a_started_jobs_step_then_deletes_what_it_wrote(
    idle_stores, idle, settings, memory_store
):
    """A job that had started may still upsert after its rows are gone: while a worker
    holds a message of it, the erasure is not done; once none does, it deletes what
    was written. A message still waiting in a queue is no reason to wait."""
    user = f"olga-{uuid.uuid4().hex[:6]}"
    tenant, broker = idle["tenant"], idle["redis"]
    job = running_conversation_job(settings, tenant, user, f"{user}-c")
    step = (TaskName.STORE_CONVERSATION, StepMessage(job_id=job.id))
    publish(idle["app"].extensions["celery"], [step, step])
    # One of the two is reserved by a worker, as kombu keeps it until the step returns.
    raw = broker.rpop("cpu")
    broker.hset(Channel.unacked_key, "tag-1", json.dumps([json.loads(raw), "", "cpu"]))
    broker.zadd(Channel.unacked_index_key, {"tag-1": time.time()})
    requested = erasure.request_erasure(
        settings.database_url, tenant, erasure.ErasureTarget.USER, user, actor="test"
    )
    with pytest.raises(erasure.ErasureNotDone) as raised:
        erasure.run(idle_stores, requested.erasure.id)
    underway = erasure.get_erasure(settings.database_url, tenant, requested.erasure.id)
    assert underway.status == "running"
    assert underway.waiting_on == [job.id]
    # Its retries spent, it waits for the sweep, saying why.
    erasure.leave_for_sweep(settings.database_url, requested.erasure.id, raised.value)
    waiting = erasure.get_erasure(settings.database_url, tenant, requested.erasure.id)
    assert waiting.status == "pending"
    assert waiting.error == "ErasureNotDone: 1 canceled job(s) still have a step underway"
    # The step writes after all (it had read its row before the erasure's commit).
    record = MemoryRecord(
        id=memory_id(str(tenant), f"conversation:{user}-c:message", 1),
        tenant=str(tenant),
        kind=MemoryKind.MESSAGE,
        text=f"{MARK} written late",
        vector=[1.0] + [0.0] * 383,
        user_id=user,
        conversation_id=f"{user}-c",
    )
    memory_store.upsert([record])
    # The step returns and its message is acknowledged; the other still waits.
    broker.hdel(Channel.unacked_key, "tag-1")
    broker.zrem(Channel.unacked_index_key, "tag-1")
    assert queue_length(broker, "cpu") == 1
    done = erasure.run(idle_stores, requested.erasure.id)
    assert done.status == "succeeded"
    assert done.removed["milvus"] == {"vectors": 1}
    assert (done.waiting_on, done.conversation_ids, done.error) == ([], [], None)
    assert done.attempts == 2
    assert memory_store.count(str(tenant), user_id=user) == 0


def test_summaries_of_an_erased_conversation_are_left_out_not_failed(idle, settings):
    store = ConversationStore(settings.database_url)
    jobs = {}
    for user in ("sam", "sue"):
        job = running_conversation_job(settings, idle["tenant"], user, f"{user}-{uuid.uuid4()}")
        store.persist(job)
        jobs[user] = store.jobs([job])[job.id]
    with transaction(settings.database_url) as connection:
        connection.execute(
            text("DELETE FROM conversations WHERE id = :id"), {"id": jobs["sam"].conversation_pk}
        )
    summary = {
        "text": "A summary.",
        "method": "extractive",
        "model": "m",
        "input_tokens": 3,
        "output_tokens": 2,
        "chunks": 1,
        "backend": "torch",
    }
    store.save_summaries({job.job_id: (job, summary) for job in jobs.values()})
    saved = store.summaries(list(jobs.values()))
    assert set(saved) == {jobs["sue"].job_id}


def test_search_requests_for_the_user_are_taken_off_the_gpu_lane(idle_stores, idle, settings):
    tenant, client = str(idle["tenant"]), idle["redis"]
    requests = {
        name: SearchRequest(
            id=name,
            tenant=tenant,
            reply_to=f"replies-{name}",
            deadline=time.time() + 60,
            query=f"{MARK} where is my parcel",
            top_k=3,
            **filters,
        )
        for name, filters in {
            "hers": {"user_id": "lena"},
            "her_chat": {"conversation_id": "lena-chat"},
            "his": {"user_id": "leo"},
        }.items()
    }
    with transaction(settings.database_url) as connection:
        connection.execute(
            text(
                "INSERT INTO conversations (id, tenant_id, external_id, user_id) "
                "VALUES (:id, :t, 'lena-chat', 'lena')"
            ),
            {"id": uuid.uuid4(), "t": tenant},
        )
    key = lane_key(idle["url"])
    for request in requests.values():
        client.lpush(key, request.model_dump_json())
    pubsub = client.pubsub()
    pubsub.subscribe("replies-hers")
    requested = erasure.request_erasure(
        settings.database_url, idle["tenant"], erasure.ErasureTarget.USER, "lena", actor="test"
    )
    done = erasure.run(idle_stores, requested.erasure.id)
    assert done.removed["redis"] == {"search_requests": 2}
    left = [SearchRequest.model_validate_json(raw).id for raw in client.lrange(key, 0, -1)]
    assert left == ["his"]
    message = wait_for(
        lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1), 5, "a reply"
    )
    assert json.loads(message["data"].split(b"\n", 1)[1])["hits"] == []
