"""Encryption at rest: message and summary text is ciphertext in PostgreSQL, reads back
as plaintext through the API and search, survives key rotation, and no convoq process
starts without a key."""

import logging
import stat
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text

from api import create_app
from config.encryption import (
    EncryptionError,
    EncryptionNotConfigured,
    KeyRing,
    UnknownKeyId,
    generate_key,
    kid_of,
    load_key_ring,
)
from devstack.stack import LocalStack, migrate
from models import Conversation, Job, JobType, Message, Summary, Tenant
from models.db import session_scope, transaction
from models.encryption import configure_encryption, key_ring
from services.encryption import reencrypt
from tests.support import ROOT, free_port, recreate_database, subprocess_env, wait_for_job

CHAT = [
    {"role": "user", "content": "My locker code at the Zurich gym is 4711, please keep it."},
    {"role": "assistant", "content": "Noted: the locker code at the Zurich gym is safe with us."},
]


@pytest.fixture(scope="module")
def conversation(client_module, headers_module, gpu_worker, cpu_worker) -> dict[str, Any]:
    """One conversation stored, summarised and indexed by the workers."""
    conversation_id = f"secret-{uuid.uuid4().hex[:8]}"
    response = client_module.post(
        "/v1/jobs/conversation",
        json={"conversation_id": conversation_id, "messages": CHAT, "method": "extractive"},
        headers=headers_module,
    )
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(client_module, headers_module, response.get_json()["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    return {"id": conversation_id, "job_id": job["id"]}


@pytest.fixture(scope="module")
def client_module(app) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def headers_module(make_tenant) -> dict[str, str]:
    return make_tenant()


def test_stored_text_is_ciphertext_and_reads_back_as_plaintext(
    conversation, client_module, headers_module, settings
):
    with transaction(settings.database_url) as connection:
        conversation_pk = connection.scalar(
            select(Conversation.id).where(Conversation.external_id == conversation["id"])
        )
        raw = connection.scalars(
            text(
                "SELECT content::text FROM messages WHERE conversation_id = :c UNION ALL "
                "SELECT text::text FROM summaries WHERE conversation_id = :c"
            ),
            {"c": conversation_pk},
        ).all()
    assert len(raw) == len(CHAT) + 1
    for value in raw:
        assert kid_of(value) == "test1", value
        assert "locker" not in value
        assert "Zurich" not in value
    # The job that posted them holds the messages it was given and the summary it
    # made: sealed too, its ids and options left plain for queries.
    with transaction(settings.database_url) as connection:
        params, result = connection.execute(
            text(
                "SELECT params::text, result::text FROM jobs WHERE params->>'conversation_id' = :c"
            ),
            {"c": conversation["id"]},
        ).one()
    for value in (params, result):
        assert "locker" not in value
        assert "Zurich" not in value
        assert '"sealed": "v1:test1:' in value
    assert conversation["id"] in params
    job = client_module.get(f"/v1/jobs/{conversation['job_id']}", headers=headers_module)
    assert "locker code" in job.get_json()["result"]["summary"]["text"]
    with session_scope(settings.database_url) as session:
        messages = session.get(Job, uuid.UUID(conversation["job_id"])).params["messages"]
    assert [m["content"] for m in messages] == [m["content"] for m in CHAT]

    view = client_module.get(
        f"/v1/conversations/{conversation['id']}", headers=headers_module
    ).get_json()
    assert [m["content"] for m in view["messages"]] == [m["content"] for m in CHAT]
    assert "locker code" in view["summary"]["text"]
    # Search reads Milvus' snippets (kept in clear there) and still finds the text.
    hits = client_module.post(
        "/v1/search", json={"query": "gym locker code", "top_k": 3}, headers=headers_module
    ).get_json()["hits"]
    assert hits[0]["text"] in {m["content"] for m in CHAT} | {view["summary"]["text"]}


@pytest.fixture
def scratch_database(settings, stack) -> Iterator[str]:
    """A database of its own: rotation rewrites every row, and the session's workers
    know only the session's key."""
    url = settings.database_url + "_keys"
    recreate_database(url)
    migrate(url)
    previous = configure_encryption(None)
    try:
        yield url
    finally:
        configure_encryption(previous)


def _raw_job_kids(url: str) -> list[str | None]:
    """The key of each sealed part of the jobs' params and results (None: in clear)."""
    with transaction(url) as connection:
        rows = connection.execute(text("SELECT params, result FROM jobs")).all()
    return [kid_of(value.get("sealed")) for row in rows for value in row if value is not None]


def _raw_kids(url: str) -> list[str | None]:
    with transaction(url) as connection:
        return [
            kid_of(value)
            for value in connection.scalars(
                text("SELECT content FROM messages UNION ALL SELECT text FROM summaries ORDER BY 1")
            )
        ]


def _texts(url: str) -> list[str]:
    with session_scope(url) as session:
        return sorted(
            [*session.scalars(select(Message.content)), *session.scalars(select(Summary.text))]
        )


def test_rotation_keeps_old_rows_readable_and_reencrypt_moves_them(scratch_database):
    url = scratch_database
    old, new = generate_key(), generate_key()
    configure_encryption(KeyRing.parse(f"old:{old}"))
    with session_scope(url) as session:
        tenant = Tenant(name="rotation")
        session.add(tenant)
        session.flush()
        chat = Conversation(tenant_id=tenant.id, external_id="c1")
        session.add(chat)
        session.flush()
        session.add_all(
            [
                Message(conversation_id=chat.id, seq=1, role="user", content="old secret"),
                Summary(conversation_id=chat.id, upto_seq=1, text="old summary", method="x"),
            ]
        )
        chat_id = chat.id
        job = Job(
            tenant_id=tenant.id,
            type=JobType.SUMMARIZE,
            params={"text": "old job text", "method": "extractive"},
            result={"text": "old job summary", "method": "extractive"},
        )
        session.add(job)
        session.flush()
        job_id = job.id
    with transaction(url) as connection:
        # Rows from before encryption was turned on: stored in clear.
        connection.execute(
            text(
                "INSERT INTO messages (conversation_id, seq, role, content) "
                "VALUES (:c, 2, 'user', 'legacy plaintext')"
            ),
            {"c": chat_id},
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, type, status, params, progress_done, "
                "progress_total, attempts) VALUES (:id, :t, 'embed', 'succeeded', "
                """'{"texts": ["legacy job text"], "store": false}', 1, 1, 1)"""
            ),
            {"id": uuid.uuid4(), "t": tenant.id},
        )
    assert Counter(_raw_kids(url)) == {"old": 2, None: 1}
    assert Counter(_raw_job_kids(url)) == {"old": 2, None: 1}

    # A new key first: old rows and the legacy row still read; new rows use the new key.
    configure_encryption(KeyRing.parse(f"new:{new},old:{old}"))
    with session_scope(url) as session:
        session.add(Message(conversation_id=chat_id, seq=3, role="user", content="new secret"))
    assert _texts(url) == ["legacy plaintext", "new secret", "old secret", "old summary"]
    assert Counter(_raw_kids(url)) == {"new": 1, "old": 2, None: 1}

    result = reencrypt(url, batch_size=1)
    assert result.kid == "new"
    assert result.rewritten == {
        "messages": 2,
        "summaries": 1,
        "jobs.params": 2,
        "jobs.result": 1,
    }
    assert set(result.remaining.values()) == {0}
    assert _raw_kids(url) == ["new"] * 4
    assert _raw_job_kids(url) == ["new"] * 3
    # The old key can go.
    configure_encryption(KeyRing.parse(f"new:{new}"))
    assert _texts(url) == ["legacy plaintext", "new secret", "old secret", "old summary"]
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job.params == {"text": "old job text", "method": "extractive"}
        assert job.result == {"text": "old job summary", "method": "extractive"}
        texts = [j.params.get("texts") for j in session.scalars(select(Job))]
    assert ["legacy job text"] in texts
    # Without the key a row was encrypted with, reading it says which key is missing.
    configure_encryption(KeyRing.parse(f"old:{old}"))
    with pytest.raises(UnknownKeyId, match="'new'"):
        _texts(url)
    with pytest.raises(UnknownKeyId, match="'new'"):
        reencrypt(url)
    # Tampering is detected, not read as text.
    configure_encryption(KeyRing.parse(f"new:{new}"))
    with transaction(url) as connection:
        connection.execute(
            text("UPDATE summaries SET text = overlay(text placing 'AAAA' from 20 for 4)")
        )
    with pytest.raises(EncryptionError, match="does not decrypt"):
        _texts(url)


def test_reencrypt_command_reports_every_row_under_the_current_key(app, settings):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["reencrypt"])
    assert result.exit_code == 0, result.output
    assert "every row is under key 'test1'" in result.output
    assert key_ring().current == "test1"


def test_no_process_starts_without_a_valid_key(settings, tmp_path):
    keyless = settings.model_copy(update={"encryption_keys": None, "encryption_key_file": None})
    # The workers, beat and flower are built by create_app too (worker/celery_app.py).
    with pytest.raises(EncryptionNotConfigured, match="no encryption key is configured"):
        create_app(keyless)
    with pytest.raises(EncryptionError, match="'k1' is not 32 bytes"):
        load_key_ring(settings.model_copy(update={"encryption_keys": SecretStr("k1:c2hvcnQ=")}))
    key_file = tmp_path / "keys"
    key_file.write_text(f"k2:{generate_key()}\nk1:{generate_key()}\n")
    ring = load_key_ring(keyless.model_copy(update={"encryption_key_file": key_file}))
    assert (ring.current, ring.kids) == ("k2", ["k2", "k1"])
    # openssl rand -base64 32 (standard base64) is read too.
    assert load_key_ring(
        settings.model_copy(update={"encryption_keys": SecretStr("k:" + "+/" * 21 + "A=")})
    )

    env = subprocess_env(
        {"API_BIND": f"127.0.0.1:{free_port()}", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    )
    env.pop("ENCRYPTION_KEYS")
    gunicorn = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.py",
         "--no-control-socket", "api:create_app()"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gunicorn.returncode != 0
    assert "the convoq API (gunicorn) will not start: no encryption key is configured" in (
        gunicorn.stdout + gunicorn.stderr
    )


def test_the_local_run_writes_a_key_file_and_says_so(settings, tmp_path, caplog):
    stack = LocalStack(settings, tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="devstack.stack"):
        path = stack.encryption_key_file()
    assert path == tmp_path / "data" / "encryption-keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"created {path}" in caplog.text
    first = path.read_text()
    assert KeyRing.parse(first).current == "local1"
    caplog.clear()
    assert stack.encryption_key_file() == path
    assert path.read_text() == first
    assert "created" not in caplog.text
