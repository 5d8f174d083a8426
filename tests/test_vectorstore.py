"""The Milvus adapter against a real Milvus Lite server."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from api import create_app
from devstack.services import Address, EmbeddedService, ensure_milvus
from tests.support import ROOT, free_port, subprocess_env
from vectorstore import (
    DIMENSION,
    SNIPPET_MAX_BYTES,
    TRANSIENT_MILVUS_ERRORS,
    MemoryKind,
    MemoryRecord,
    MemoryStore,
    MilvusUnavailableError,
    SchemaMismatchError,
    memory_id,
    truncate_utf8,
)
from vectorstore.milvus import FIELDS, VECTOR_FIELD

HOSTILE = [
    '" or 1==1 or "',
    "' or ''=='",
    'x" || tenant != "',
    "\\",
    '\\"',
    '"',
    "a\nb\r\tc",
    "\x00",
    "{tenant}",
    "ü日本🙂",
    "\u2028",
    ") or (true",
]


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def unit_vectors(count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIMENSION))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def record(
    tenant: str,
    position: int,
    vector: np.ndarray,
    *,
    kind: MemoryKind = MemoryKind.MESSAGE,
    user_id: str | None = "u1",
    conversation_id: str | None = "c1",
    text: str | None = None,
) -> MemoryRecord:
    source = f"conversation:{conversation_id}:{kind}"
    return MemoryRecord(
        id=memory_id(tenant, source, position),
        tenant=tenant,
        kind=kind,
        text=text if text is not None else f"{kind} {position}",
        vector=vector,
        user_id=user_id,
        conversation_id=conversation_id,
    )


def raw_client(uri: str) -> MilvusClient:
    return MilvusClient(uri=uri, timeout=10, dedicated=True)


def test_memory_id_is_deterministic_and_unambiguous():
    first = memory_id("acme", "conversation:c1:message", 3)
    assert first == memory_id("acme", "conversation:c1:message", 3)
    assert len(first) == 64
    assert int(first, 16) >= 0
    others = {
        memory_id("acme", "conversation:c1:message", 4),
        memory_id("other", "conversation:c1:message", 3),
        memory_id("acme", "conversation:c1:summary", 3),
        memory_id("acme:conversation", "c1:message", 3),
    }
    assert first not in others
    assert len(others) == 4


def test_ensure_collection_twice_keeps_the_rows(memory_store, tenant):
    memory_store.upsert([record(tenant, i, v) for i, v in enumerate(unit_vectors(3))])
    memory_store.ensure_collection()
    memory_store.ensure_collection()
    assert memory_store.count(tenant) == 3


@pytest.mark.timeout(120)
def test_ensure_collection_from_two_processes_at_once(settings, stack):
    name = f"convoq_test_race_{uuid.uuid4().hex[:8]}"
    script = (
        "import sys, time\n"
        "from vectorstore import MemoryStore\n"
        "store = MemoryStore(sys.argv[1], sys.argv[2])\n"
        "store.ping()\n"
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
        "store.ensure_collection()\n"
        "print('ensured')\n"
    )
    start_at = str(time.time() + 6)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, settings.milvus_uri, name, start_at],
            cwd=ROOT,
            env=subprocess_env({}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=90) for process in processes]
        for process, (stdout, stderr) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, stderr
            assert stdout.strip() == "ensured"
        store = MemoryStore(settings.milvus_uri, name)
        store.ensure_collection()
        vectors = unit_vectors(2)
        store.upsert([record("t", i, v) for i, v in enumerate(vectors)])
        assert store.search("t", vectors[1], top_k=1)[0].id == memory_id(
            "t", "conversation:c1:message", 1
        )
        client = raw_client(settings.milvus_uri)
        assert client.list_indexes(name, field_name=VECTOR_FIELD) != []
        client.close()
    finally:
        MemoryStore(settings.milvus_uri, name).drop_collection()


def _create_raw_collection(uri: str, name: str, *, dim: int, metric: str) -> None:
    client = raw_client(uri)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for field, (data_type, params) in FIELDS.items():
        if data_type == DataType.FLOAT_VECTOR:
            params = {"dim": dim}
        schema.add_field(field, data_type, is_primary=field == "id", **params)
    index = MilvusClient.prepare_index_params()
    index.add_index(field_name=VECTOR_FIELD, index_type="AUTOINDEX", metric_type=metric)
    client.create_collection(name, schema=schema, index_params=index)
    client.close()


@pytest.mark.parametrize(
    ("dim", "metric", "complaint"),
    [(8, "COSINE", "vector has dim=8, not 384"), (DIMENSION, "L2", "metric L2, not COSINE")],
)
def test_ensure_collection_refuses_a_collection_of_another_shape(
    settings, stack, dim, metric, complaint
):
    name = f"convoq_test_shape_{uuid.uuid4().hex[:8]}"
    _create_raw_collection(settings.milvus_uri, name, dim=dim, metric=metric)
    store = MemoryStore(settings.milvus_uri, name)
    try:
        with pytest.raises(SchemaMismatchError, match=complaint) as raised:
            store.ensure_collection()
        assert name in str(raised.value)
        assert "MILVUS_COLLECTION" in str(raised.value)
    finally:
        store.drop_collection()


def test_upserting_the_same_ids_again_replaces_the_rows(memory_store, tenant):
    vectors = unit_vectors(4, seed=1)
    memory_store.upsert([record(tenant, i, v, text="first") for i, v in enumerate(vectors)])
    assert memory_store.count(tenant) == 4
    again = [record(tenant, i, v, text="second") for i, v in enumerate(vectors)]
    # A redelivered task may even repeat a record within one batch.
    assert memory_store.upsert([*again, again[0]]) == 4
    assert memory_store.count(tenant) == 4
    hits = memory_store.search(tenant, vectors[0], top_k=10)
    assert [hit.text for hit in hits] == ["second"] * 4


def test_search_ranks_the_nearest_vector_first(memory_store, tenant):
    vectors = unit_vectors(20, seed=2)
    memory_store.upsert([record(tenant, i, v) for i, v in enumerate(vectors)])
    query = vectors[7] + np.random.default_rng(3).normal(scale=0.01, size=DIMENSION)
    hits = memory_store.search(tenant, query, top_k=5)
    assert len(hits) == 5
    assert hits[0].id == memory_id(tenant, "conversation:c1:message", 7)
    assert hits[0].score > 0.95 > 0.5 > hits[1].score
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert (hits[0].kind, hits[0].user_id, hits[0].conversation_id, hits[0].text) == (
        MemoryKind.MESSAGE,
        "u1",
        "c1",
        "message 7",
    )


def test_metadata_is_stored_with_the_vector(memory_store, tenant):
    vector = unit_vectors(1, seed=11)[0]
    metadata = {"source": "faq", "page": 3, "score": 0.5, "public": True, "note": None, "ü": '"'}
    memory_store.upsert(
        [
            MemoryRecord(
                id=memory_id(tenant, "job:j1", 0),
                tenant=tenant,
                kind=MemoryKind.TEXT,
                text="How do I reset my password?",
                vector=vector.tolist(),
                metadata=metadata,
            )
        ]
    )
    [hit] = memory_store.search(tenant, vector, top_k=5)
    assert (hit.metadata, hit.kind, hit.user_id) == (metadata, MemoryKind.TEXT, None)


def test_a_search_right_after_an_upsert_sees_the_row(memory_store, tenant):
    for position, vector in enumerate(unit_vectors(5, seed=4)):
        memory_store.upsert([record(tenant, position, vector)])
        assert memory_store.search(tenant, vector, top_k=1)[0].text == f"message {position}"
        assert memory_store.count(tenant) == position + 1


def test_tenants_never_see_each_others_rows(memory_store):
    tenant_a, tenant_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    vectors = unit_vectors(6, seed=5)
    memory_store.upsert([record(tenant_a, i, v) for i, v in enumerate(vectors)])
    memory_store.upsert([record(tenant_b, 0, vectors[0], user_id="u2", conversation_id="c2")])
    for filters in ({}, {"user_id": "u1"}, {"conversation_id": "c1"}, {"kind": "message"}):
        hits = memory_store.search(tenant_b, vectors[3], top_k=10, **filters)
        assert all(hit.id == memory_id(tenant_b, "conversation:c2:message", 0) for hit in hits)
    assert memory_store.search(tenant_b, vectors[3], top_k=10, user_id="u1") == []
    assert memory_store.count(tenant_b) == 1
    assert memory_store.count(tenant_b, user_id="u1") == 0
    assert memory_store.count(tenant_a) == 6
    assert memory_store.search(f"none-{uuid.uuid4().hex}", vectors[0], top_k=10) == []
    with pytest.raises(ValueError, match="tenant"):
        memory_store.search("", vectors[0])


def test_filters_by_user_conversation_and_kind(memory_store, tenant):
    vectors = unit_vectors(6, seed=6)
    memory_store.upsert(
        [
            record(tenant, 0, vectors[0], user_id="u1", conversation_id="c1"),
            record(tenant, 1, vectors[1], user_id="u1", conversation_id="c1"),
            record(tenant, 0, vectors[2], user_id="u1", conversation_id="c1", kind="summary"),
            record(tenant, 0, vectors[3], user_id="u1", conversation_id="c2"),
            record(tenant, 0, vectors[4], user_id="u2", conversation_id="c3"),
            record(tenant, 0, vectors[5], user_id=None, conversation_id=None, kind=MemoryKind.TEXT),
        ]
    )  # fmt: skip
    assert memory_store.count(tenant) == 6
    assert memory_store.count(tenant, user_id="u1") == 4
    assert memory_store.count(tenant, conversation_id="c1") == 3
    assert memory_store.count(tenant, conversation_id="c1", kind=MemoryKind.SUMMARY) == 1
    assert memory_store.count(tenant, user_id="u2", conversation_id="c1") == 0
    assert memory_store.count(tenant, kind="text") == 1
    hits = memory_store.search(tenant, vectors[4], top_k=10, user_id="u1")
    assert len(hits) == 4
    assert {hit.user_id for hit in hits} == {"u1"}
    hits = memory_store.search(tenant, vectors[0], top_k=10, kind=MemoryKind.SUMMARY)
    assert [(hit.kind, hit.conversation_id) for hit in hits] == [(MemoryKind.SUMMARY, "c1")]
    text_hit = memory_store.search(tenant, vectors[5], top_k=1)[0]
    assert (text_hit.kind, text_hit.user_id, text_hit.conversation_id) == (
        MemoryKind.TEXT,
        None,
        None,
    )
    with pytest.raises(ValueError, match="not a valid MemoryKind"):
        memory_store.count(tenant, kind="secret")


def test_hostile_filter_values_stay_inside_their_string(memory_store, tenant):
    vectors = unit_vectors(len(HOSTILE) + 1, seed=7)
    memory_store.upsert([record(tenant, 0, vectors[-1])])
    for value in HOSTILE:
        assert memory_store.count(value) == 0, value
        assert memory_store.count(tenant, user_id=value) == 0, value
        assert memory_store.count(tenant, conversation_id=value) == 0, value
        assert memory_store.search(tenant, vectors[-1], top_k=5, user_id=value) == [], value
        assert memory_store.search(value, vectors[-1], top_k=5) == [], value
        assert memory_store.delete(tenant, user_id=value) == 0, value
    assert memory_store.count(tenant) == 1
    # Stored as ids, they read back exactly.
    hostile_tenant = f'{tenant}" or "1"=="1'
    memory_store.upsert(
        [
            record(hostile_tenant, i, vectors[i], user_id=value, conversation_id=value)
            for i, value in enumerate(HOSTILE)
        ]
    )
    for i, value in enumerate(HOSTILE):
        assert memory_store.count(hostile_tenant, user_id=value, conversation_id=value) == 1
        hits = memory_store.search(hostile_tenant, vectors[i], top_k=1, user_id=value)
        assert (hits[0].user_id, hits[0].conversation_id) == (value, value)
    assert memory_store.count(hostile_tenant) == len(HOSTILE)
    with pytest.raises(ValueError, match="surrogate"):
        memory_store.count(tenant, user_id="\ud800")


def test_delete_by_conversation_and_by_user_is_scoped_to_the_tenant(memory_store):
    tenant_a, tenant_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    vectors = unit_vectors(4, seed=8)
    for tenant in (tenant_a, tenant_b):
        memory_store.upsert(
            [
                record(tenant, 0, vectors[0], user_id="u1", conversation_id="c1"),
                record(tenant, 1, vectors[1], user_id="u1", conversation_id="c1"),
                record(tenant, 0, vectors[2], user_id="u1", conversation_id="c2"),
                record(tenant, 0, vectors[3], user_id="u2", conversation_id="c3"),
            ]
        )
    assert memory_store.delete(tenant_a, conversation_id="c1") == 2
    assert memory_store.count(tenant_a) == 2
    assert memory_store.count(tenant_a, conversation_id="c1") == 0
    assert memory_store.count(tenant_b, conversation_id="c1") == 2

    assert memory_store.delete(tenant_a, user_id="u1") == 1
    assert memory_store.count(tenant_a, user_id="u1") == 0
    assert memory_store.count(tenant_a, user_id="u2") == 1
    assert memory_store.count(tenant_b) == 4

    b_row = memory_id(tenant_b, "conversation:c3:message", 0)
    assert memory_store.delete(tenant_a, ids=[b_row]) == 0
    assert memory_store.count(tenant_b) == 4
    assert memory_store.delete(tenant_b, ids=[b_row]) == 1
    assert memory_store.count(tenant_b, user_id="u2") == 0
    assert memory_store.delete(tenant_b, ids=[]) == 0
    with pytest.raises(ValueError, match="needs conversation_id"):
        memory_store.delete(tenant_b)
    assert memory_store.count(tenant_b) == 3


@pytest.mark.parametrize("char", ["é", "日", "🙂"])
def test_text_is_cut_to_a_snippet_on_a_character_boundary(memory_store, tenant, char):
    text = "ab" + char * SNIPPET_MAX_BYTES
    vector = unit_vectors(1, seed=9)[0]
    memory_store.upsert([record(tenant, 0, vector, text=text)])
    stored = memory_store.search(tenant, vector, top_k=1)[0].text
    size = len(char.encode())
    assert stored == "ab" + char * ((SNIPPET_MAX_BYTES - 2) // size)
    assert SNIPPET_MAX_BYTES - size < len(stored.encode()) <= SNIPPET_MAX_BYTES
    assert truncate_utf8("short", SNIPPET_MAX_BYTES) == "short"
    assert truncate_utf8("a日b", 3) == "a"


def test_records_are_checked_before_they_reach_milvus(memory_store, tenant):
    vector = unit_vectors(1)[0]
    with pytest.raises(ValueError, match="384 dimensions, not 3"):
        memory_store.upsert([record(tenant, 0, np.ones(3))])
    with pytest.raises(ValueError, match="user_id is longer than 1024 bytes"):
        memory_store.upsert([record(tenant, 0, vector, user_id="🙂" * 257)])
    with pytest.raises(ValueError, match="top_k"):
        memory_store.search(tenant, vector, top_k=0)
    assert memory_store.count(tenant) == 0


def _count_in_child(store: MemoryStore, tenant: str, parent_client_id: int, pipe) -> None:
    client_id = id(store._client(5))
    pipe.send((store.count(tenant), client_id != parent_client_id, list(store._clients)))


def test_a_forked_child_uses_a_client_of_its_own(memory_store, tenant):
    memory_store.upsert([record(tenant, i, v) for i, v in enumerate(unit_vectors(2))])
    parent_client = memory_store._client(5)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_count_in_child, args=(memory_store, tenant, id(parent_client), sender)
    )
    child.start()
    assert receiver.poll(60), "the child did not answer"
    count, own_client, pids = receiver.recv()
    child.join(30)
    assert child.exitcode == 0
    assert (count, own_client, pids) == (2, True, [child.pid])
    assert memory_store.count(tenant) == 2  # the parent's channel still works


def test_readyz_names_milvus_when_it_is_down(settings, stack):
    up = create_app(settings).test_client().get("/readyz")
    assert up.status_code == 200
    assert up.get_json()["checks"]["milvus"] == "ok"
    dead = settings.model_copy(update={"milvus_uri": f"http://127.0.0.1:{free_port()}"})
    client = create_app(dead).test_client()
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 2.5
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["message"] == "not ready: milvus is down"
    assert {"service": "milvus", "status": "down"} in error["details"]
    assert {"service": "postgresql", "status": "ok"} in error["details"]


def test_a_missing_collection_is_an_error_not_a_retry(settings, stack, tenant):
    store = MemoryStore(settings.milvus_uri, f"convoq_test_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(MilvusException) as raised:
        store.count(tenant)
    assert not isinstance(raised.value, TRANSIENT_MILVUS_ERRORS)


@pytest.fixture
def private_milvus(tmp_path) -> Iterator[tuple[str, EmbeddedService]]:
    uri = f"http://127.0.0.1:{free_port()}"
    service = ensure_milvus(uri, tmp_path / "milvus")
    assert service is not None
    try:
        yield uri, service
    finally:
        if service.process is not None and service.process.poll() is None:
            os.kill(service.process.pid, signal.SIGCONT)
        service.stop()


@pytest.mark.timeout(120)
def test_rows_survive_a_restart_of_milvus_lite(private_milvus, tmp_path):
    uri, service = private_milvus
    store = MemoryStore(uri, "convoq_test_restart", timeout=3)
    store.ensure_collection()
    vectors = unit_vectors(50, seed=10)
    store.upsert([record("acme", i, v) for i, v in enumerate(vectors)])
    store.delete("acme", ids=[memory_id("acme", "conversation:c1:message", 49)])

    service.stop()  # SIGINT: Milvus Lite writes its data out
    assert service.process is not None
    assert service.process.returncode == 0
    assert "Shutting down" in (tmp_path / "milvus" / "milvus.log").read_text()
    assert not Address.from_url(uri, 19530).is_listening()
    started = time.monotonic()
    with pytest.raises(TRANSIENT_MILVUS_ERRORS):
        store.count("acme")
    assert time.monotonic() - started < 5

    again = ensure_milvus(uri, tmp_path / "milvus")
    assert again is not None
    try:
        # The same store: its client reconnects, and reloads the collection.
        assert store.count("acme") == 49
        hits = store.search("acme", vectors[12], top_k=1)
        assert hits[0].id == memory_id("acme", "conversation:c1:message", 12)
        assert store.search("acme", vectors[49], top_k=1)[0].id != memory_id(
            "acme", "conversation:c1:message", 49
        )
    finally:
        again.stop()


@pytest.mark.timeout(60)
def test_a_hung_milvus_is_a_transient_error_within_the_timeout(private_milvus):
    uri, service = private_milvus
    store = MemoryStore(uri, "convoq_test_hung", timeout=1.5)
    store.ensure_collection()
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(MilvusUnavailableError):
            store.count("acme")
        with pytest.raises(MilvusUnavailableError):
            store.ping(timeout=1)
        assert time.monotonic() - started < 5
    finally:
        os.kill(service.process.pid, signal.SIGCONT)
    assert store.count("acme") == 0
