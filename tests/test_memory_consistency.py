"""Nothing stale: after every kind of job, a job deleted and every erase, the vectors in
Milvus are exactly those of rows PostgreSQL still has, with the rows' texts."""

import uuid

import pytest

from services.consistency import audit_memory
from services.tenants import create_api_key
from tests.support import submit_embed, wait_for, wait_for_job
from vectorstore import MemoryKind, MemoryRecord, memory_id


@pytest.fixture(scope="module")
def tenant(settings, stack):
    principal, key = create_api_key(
        settings.database_url, f"t-{uuid.uuid4().hex[:12]}", actor="test"
    )
    return principal, {"Authorization": f"Bearer {key}"}


def agrees(settings, memory_store, tenant_id):
    audit = audit_memory(settings.database_url, memory_store, tenant_id)
    assert audit.agrees, audit
    return audit


def converse(client, headers, conversation_id, messages, **options):
    body = {"conversation_id": conversation_id, "user_id": "u-1", "messages": messages}
    response = client.post("/v1/jobs/conversation", json={**body, **options}, headers=headers)
    assert response.status_code == 202, response.get_json()
    done = wait_for_job(client, headers, response.get_json()["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    return done


def chat(*lines):
    return [{"role": "user", "content": line} for line in lines]


def test_every_kind_of_job_leaves_the_index_in_agreement(
    client, tenant, settings, memory_store, gpu_worker, cpu_worker
):
    tenant_id, headers = tenant[0].tenant_id, tenant[1]
    stored = submit_embed(client, headers, ["a note to keep", "another one"], store=True)
    unstored = submit_embed(client, headers, ["a note not kept"])
    summarized = client.post(
        "/v1/jobs/summarize",
        json={"text": "The meeting moved to Friday. Everyone agreed. Lunch was good."},
        headers=headers,
    ).get_json()
    for job in (stored, unstored, summarized):
        assert wait_for_job(client, headers, job["id"], timeout=120)["status"] == "succeeded"
    converse(client, headers, "c-both", chat("my parcel is late", "it was due on monday"))
    converse(client, headers, "c-plain", chat("no summary here"), summarize=False)
    converse(client, headers, "c-quiet", chat("not indexed at all"), embed=False)
    audit = agrees(settings, memory_store, tenant_id)
    assert audit.stale == []
    assert audit.missing == []
    assert memory_store.count(str(tenant_id)) == 2 + 2 + 1 + 1


def test_a_summary_made_again_without_embedding_takes_its_old_vector_away(
    client, tenant, settings, memory_store, gpu_worker, cpu_worker
):
    tenant_id, headers = tenant[0].tenant_id, tenant[1]
    summary_id = memory_id(str(tenant_id), "conversation:c-resum:summary", 0)
    converse(client, headers, "c-resum", chat("the heating is broken", "since last week"))
    assert memory_store.count(str(tenant_id), kind="summary", conversation_id="c-resum") == 1

    converse(client, headers, "c-resum", chat("it works again now"), embed=False)
    snippets = memory_store.snippets(str(tenant_id))
    assert summary_id not in snippets, "the replaced summary is still searchable"
    agrees(settings, memory_store, tenant_id)


def test_a_summary_made_again_with_embedding_replaces_its_vector(
    client, tenant, settings, memory_store, gpu_worker, cpu_worker
):
    tenant_id, headers = tenant[0].tenant_id, tenant[1]
    summary_id = memory_id(str(tenant_id), "conversation:c-again:summary", 0)
    first = converse(client, headers, "c-again", chat("the printer is jammed", "paper tray 2"))
    second = converse(client, headers, "c-again", chat("also out of toner", "order more"))
    assert first["result"]["summary"]["text"] != second["result"]["summary"]["text"]
    assert memory_store.snippets(str(tenant_id))[summary_id] == second["result"]["summary"]["text"]
    agrees(settings, memory_store, tenant_id)


def test_deleting_an_embed_job_takes_its_vectors_with_it(
    client, tenant, settings, memory_store, gpu_worker, cpu_worker
):
    tenant_id, headers = tenant[0].tenant_id, tenant[1]
    job = submit_embed(client, headers, ["forget me", "and me"], store=True, user_id="u-del")
    assert wait_for_job(client, headers, job["id"], timeout=120)["status"] == "succeeded"
    assert memory_store.count(str(tenant_id), user_id="u-del") == 2

    assert client.delete(f"/v1/jobs/{job['id']}", headers=headers).status_code == 204
    wait_for(
        lambda: memory_store.count(str(tenant_id), user_id="u-del") == 0,
        60,
        "the deleted job's vectors to go",
    )
    agrees(settings, memory_store, tenant_id)


def test_check_memory_finds_a_vector_whose_row_is_gone_and_repairs(
    app, tenant, settings, memory_store
):
    principal = tenant[0]
    ghost = memory_id(str(principal.tenant_id), f"job:{uuid.uuid4()}", 0)
    record = MemoryRecord(
        id=ghost,
        tenant=str(principal.tenant_id),
        kind=MemoryKind.TEXT,
        text="x",
        vector=[0.1] * 384,
    )
    memory_store.upsert([record])
    cli = app.test_cli_runner()

    found = cli.invoke(args=["check-memory", "--tenant", principal.tenant_name])
    assert found.exit_code == 1
    assert "stale vectors: 1;" in found.output
    assert audit_memory(settings.database_url, memory_store, principal.tenant_id).stale == [ghost]

    repaired = cli.invoke(args=["check-memory", "--tenant", principal.tenant_name, "--repair"])
    assert "deleted 1 stale vectors" in repaired.output
    agrees(settings, memory_store, principal.tenant_id)


def erase(client, headers, path):
    response = client.delete(path, headers=headers)
    assert response.status_code == 202, response.get_json()
    location = response.headers["Location"]
    wait_for(
        lambda: client.get(location, headers=headers).get_json()["status"] == "succeeded",
        60,
        f"the erasure of {path}",
        interval=0.2,
    )


def test_every_erase_leaves_the_index_in_agreement(
    client, tenant, settings, memory_store, gpu_worker, cpu_worker
):
    tenant_id, headers = tenant[0].tenant_id, tenant[1]
    converse(client, headers, "c-erase", chat("delete this chat", "and this line"))
    erase(client, headers, "/v1/conversations/c-erase")
    assert memory_store.count(str(tenant_id), conversation_id="c-erase") == 0
    agrees(settings, memory_store, tenant_id)

    assert memory_store.count(str(tenant_id), user_id="u-1") > 0
    erase(client, headers, "/v1/users/u-1")
    assert memory_store.count(str(tenant_id), user_id="u-1") == 0
    agrees(settings, memory_store, tenant_id)
