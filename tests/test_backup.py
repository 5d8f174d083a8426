"""Backup and restore (services/backup.py, ``make backup`` / ``make restore``).

The session's stores, with a conversation (messages, summary, vectors) and an
embed job with ``store`` made by the real workers, are backed up and restored
into a new database and a new collection: every row of every table and every
vector comes back equal, and the restored stores serve the API. A changed file
and stores that hold data are refused. The session's own stores are only read.
"""

import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest
import yaml
from psycopg import sql

from api import create_app
from devstack.services import ensure_database
from services.backup import (
    RECORDS_FILE,
    VECTORS_FILE,
    create_backup,
    read_manifest,
    verify_backup,
)
from services.tenants import authenticate
from tests.support import ROOT, wait_for_job
from vectorstore import DIMENSION, MemoryKind, MemoryRecord, MemoryStore, memory_id

CHAT = [
    {"role": "user", "content": "My parcel with the blue headphones has not arrived."},
    {"role": "assistant", "content": "The courier will deliver it tomorrow before noon."},
    {"role": "user", "content": "Please also send the invoice to my office address."},
    {"role": "assistant", "content": "Done: the invoice goes to your office from now on."},
]
TEXTS = ["A note about the quarterly budget review.", "Café opening hours: 7 to 19 ☕"]


def conninfo(database_url: str) -> str:
    return database_url.replace("+psycopg", "")


def database_named(database_url: str, name: str) -> str:
    return urlsplit(database_url)._replace(path=f"/{name}").geturl()


def drop_database(database_url: str) -> None:
    parts = urlsplit(conninfo(database_url))
    maintenance = parts._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(parts.path.lstrip("/"))
            )
        )


def table_names(connection: psycopg.Connection) -> list[str]:
    return [
        row[0]
        for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
    ]


def table_rows(connection: psycopg.Connection, table: str) -> list[tuple]:
    """Every row, in the order of all its columns: comparable across databases."""
    (columns,) = connection.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attnum > 0 AND NOT attisdropped",
        (table,),
    ).fetchone()
    order = sql.SQL(", ").join(sql.Literal(i) for i in range(1, columns + 1))
    query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(table), order)
    return connection.execute(query).fetchall()


def all_rows(database_url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(conninfo(database_url)) as connection:
        return {table: table_rows(connection, table) for table in table_names(connection)}


def vectors_by_id(store: MemoryStore) -> dict[str, dict]:
    rows = {}
    for batch in store.scan_all():
        for row in batch:
            row = dict(row)
            row["vector"] = np.asarray(row["vector"], dtype="<f4").tobytes()
            rows[row.pop("id")] = row
    return rows


def restore_cli(target_settings, directory: Path, *options: str):
    runner = create_app(target_settings).test_cli_runner()
    return runner.invoke(args=["restore", str(directory), *options])


@pytest.fixture(scope="module")
def source(app, make_tenant, gpu_worker, cpu_worker, memory_store, settings):
    """A conversation job (summary, vectors) and an embed job with store, by the workers;
    and a vector that no row accounts for, as a job writing after the backup's snapshot
    would leave."""
    client = app.test_client()
    headers = make_tenant()
    conversation_id = f"backup-{uuid.uuid4().hex[:8]}"
    body = {"conversation_id": conversation_id, "user_id": "u-backup", "messages": CHAT}
    body |= {"summarize": True, "embed": True}
    conversation = client.post("/v1/jobs/conversation", json=body, headers=headers)
    assert conversation.status_code == 202, conversation.get_json()
    embed_body = {"texts": TEXTS, "store": True, "metadata": {"source": "backup test"}}
    embed = client.post("/v1/jobs/embed", json=embed_body, headers=headers)
    assert embed.status_code == 202, embed.get_json()
    for job in (conversation.get_json(), embed.get_json()):
        done = wait_for_job(client, headers, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
    tenant = str(authenticate(settings.database_url, headers["Authorization"][7:]).tenant_id)
    orphan = memory_id(tenant, f"job:{uuid.uuid4()}", 0)
    vector = np.random.default_rng(7).standard_normal(DIMENSION).astype(np.float32)
    memory_store.upsert(
        [MemoryRecord(id=orphan, tenant=tenant, kind=MemoryKind.TEXT, text="late", vector=vector)]
    )
    return SimpleNamespace(
        client=client,
        headers=headers,
        tenant=tenant,
        conversation_id=conversation_id,
        embed_job=embed.get_json()["id"],
        orphan=orphan,
    )


@pytest.fixture(scope="module")
def backup(source, settings, tmp_path_factory):
    """A backup read from an exported snapshot, and every row as that snapshot sees it."""
    directory = tmp_path_factory.mktemp("backups") / "one"
    with psycopg.connect(conninfo(settings.database_url)) as connection:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with connection.transaction():
            (snapshot,) = connection.execute("SELECT pg_export_snapshot()").fetchone()
            rows = {table: table_rows(connection, table) for table in table_names(connection)}
            manifest = create_backup(settings, directory, version="test", snapshot=snapshot)
    return SimpleNamespace(directory=directory, manifest=manifest, rows=rows)


@pytest.fixture(scope="module")
def target(settings):
    """A new database and collection to restore into; dropped at the end."""
    name = f"convoq_test_restore_{uuid.uuid4().hex[:8]}"
    target_settings = settings.model_copy(
        update={
            "database_url": database_named(settings.database_url, name),
            "milvus_collection": name,
        }
    )
    ensure_database(target_settings.database_url)
    store = MemoryStore(target_settings.milvus_uri, name)
    yield SimpleNamespace(settings=target_settings, store=store)
    store.drop_collection()
    drop_database(target_settings.database_url)


@pytest.fixture(scope="module")
def restored(backup, target):
    result = restore_cli(target.settings, backup.directory)
    assert result.exit_code == 0, result.output
    return result


def test_a_restore_gives_back_every_row_and_every_vector(
    source, backup, target, restored, memory_store, settings
):
    manifest = backup.manifest
    assert "restored" in restored.output
    # Every row of every table, alembic_version included, as the snapshot saw it.
    assert all_rows(target.settings.database_url) == backup.rows
    assert {t["name"]: t["rows"] for t in manifest["postgres"]["tables"]} == {
        name: len(rows) for name, rows in backup.rows.items() if name != "alembic_version"
    }
    assert manifest["postgres"]["alembic_revision"] == backup.rows["alembic_version"][0][0]
    assert manifest["postgres"]["snapshot_at"] < manifest["created_at"]
    assert set(manifest["files"]) == {t["file"] for t in manifest["postgres"]["tables"]} | {
        RECORDS_FILE,
        VECTORS_FILE,
    }
    # New rows get new ids: the sequences are past the restored ones.
    with psycopg.connect(conninfo(target.settings.database_url)) as connection:
        (next_id,) = connection.execute("SELECT nextval('messages_id_seq')").fetchone()
    assert next_id > max(row[0] for row in backup.rows["messages"])

    # Every vector, bit for bit; the one no row accounts for is left out.
    source_vectors = vectors_by_id(memory_store)
    restored_vectors = vectors_by_id(target.store)
    assert len(restored_vectors) == manifest["milvus"]["vectors"]
    assert manifest["milvus"]["orphans_skipped"] >= 1
    assert {i: source_vectors[i] for i in restored_vectors} == restored_vectors
    ours = {i for i, row in source_vectors.items() if row["tenant"] == source.tenant}
    assert source.orphan in ours
    assert {i for i, r in restored_vectors.items() if r["tenant"] == source.tenant} == ours - {
        source.orphan
    }
    assert len(ours) == len(CHAT) + 1 + len(TEXTS) + 1  # messages, summary, texts, orphan

    # The restored stores serve the API, with the same keys.
    client = create_app(target.settings).test_client()
    view = client.get(f"/v1/conversations/{source.conversation_id}", headers=source.headers)
    assert view.status_code == 200, view.get_json()
    assert [m["content"] for m in view.get_json()["messages"]] == [m["content"] for m in CHAT]
    assert view.get_json()["summary"]["text"]
    search = client.post(
        "/v1/search",
        json={"query": "when will my headphones be delivered", "top_k": 3},
        headers=source.headers,
    )
    assert search.status_code == 200, search.get_json()
    hits = search.get_json()["hits"]
    assert hits[0]["conversation_id"] == source.conversation_id
    assert {hit["id"] for hit in hits} <= restored_vectors.keys()


def test_restore_refuses_stores_that_hold_data_unless_forced(backup, target, restored):
    refused = restore_cli(target.settings, backup.directory)
    assert refused.exit_code == 1
    assert "restore needs empty stores" in refused.output
    assert "--force" in refused.output
    assert f"{backup.manifest['milvus']['vectors']} vectors" in refused.output
    forced = restore_cli(target.settings, backup.directory, "--force")
    assert forced.exit_code == 0, forced.output
    assert all_rows(target.settings.database_url) == backup.rows
    assert target.store.count_all() == backup.manifest["milvus"]["vectors"]


@pytest.mark.parametrize("name", ["postgres/messages.csv", VECTORS_FILE])
def test_a_changed_file_is_refused_before_anything_is_restored(backup, settings, tmp_path, name):
    copy = tmp_path / "changed"
    shutil.copytree(backup.directory, copy)
    data = bytearray((copy / name).read_bytes())
    data[-3] ^= 0x01  # one bit, the size unchanged
    (copy / name).write_bytes(bytes(data))
    fresh = f"convoq_test_restore_{uuid.uuid4().hex[:8]}"
    fresh_settings = settings.model_copy(
        update={
            "database_url": database_named(settings.database_url, fresh),
            "milvus_collection": fresh,
        }
    )
    ensure_database(fresh_settings.database_url)
    try:
        result = restore_cli(fresh_settings, copy)
        assert result.exit_code == 1
        assert f"{name} in {copy} does not match its sha256" in result.output
        assert all_rows(fresh_settings.database_url) == {}
        assert not MemoryStore(settings.milvus_uri, fresh).has_collection()
    finally:
        drop_database(fresh_settings.database_url)


def test_the_backup_command_writes_dated_backups_and_keeps_the_newest(app, tmp_path, source):
    runner = app.test_cli_runner()
    written = []
    for _ in range(2):
        result = runner.invoke(args=["backup", "--root", str(tmp_path), "--keep", "1"])
        assert result.exit_code == 0, result.output
        written.append(Path(result.stdout.strip().splitlines()[-1]))
    assert written[0] < written[1]
    assert sorted(tmp_path.iterdir()) == [written[1]]
    manifest = verify_backup(written[1])
    assert manifest["convoq"]["version"] == app.extensions["convoq.version"]
    assert (written[1] / "manifest.json").stat().st_mode & 0o077 == 0
    refused = runner.invoke(args=["backup", str(written[1])])
    assert refused.exit_code == 1
    assert "exists and is not empty" in refused.output
    assert read_manifest(written[1]) == manifest


def test_the_documented_schedule_backs_up_every_hour():
    """deploy/k8s/backup-cronjob.yaml: the RPO of one hour the README states."""
    documents = list(yaml.safe_load_all((ROOT / "deploy/k8s/backup-cronjob.yaml").read_text()))
    (cronjob,) = [doc for doc in documents if doc["kind"] == "CronJob"]
    assert cronjob["spec"]["schedule"] == "0 * * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["flask", "--app", "api", "backup"]
    (volume,) = pod["volumes"]
    (claim,) = [doc for doc in documents if doc["kind"] == "PersistentVolumeClaim"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    help_text = create_app().test_cli_runner().invoke(args=["backup", "--help"]).output
    assert "--root" in help_text
    assert "--keep" in help_text
