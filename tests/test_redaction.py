"""PII redaction: for a tenant that turned it on, a fixed set of e-mail addresses, phone
numbers, IBANs, card and AHV numbers never reaches PostgreSQL, Milvus or the logs of the
API and the workers; text without PII, and every text of other tenants, is unchanged."""

import re
import uuid
from typing import Any

import numpy as np
import pytest
import requests
from sqlalchemy import select, text

from models import Conversation, Job, Message, Summary
from models.db import transaction
from services.redaction import redact
from services.tenants import authenticate, create_api_key
from tests.api_server import api_server

EMAILS = ["anna.muster@example.ch", "Peter.Meier+crm@mail.example-firma.com"]
PHONES = ["+41 44 668 18 00", "044 668 18 00", "0041 79 123 45 67", "+41791234567"]
IBANS = ["CH93 0076 2011 6238 5295 7", "CH9300762011623852957", "DE89 3704 0044 0532 0130 00"]
CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]
AHVS = ["756.1234.5678.97", "756.9217.0769.85", "7561234567897"]
PII = EMAILS + PHONES + IBANS + CARDS + AHVS
# A 16-digit number that fails Luhn is not a card number: it stays.
NOT_A_CARD = "4111 1111 1111 1112"
NO_PII = (
    "Order 12345 of 2024-03-15 at 14:30: 3 items for CHF 120.50, version 1.2.3, ticket #4711. "
    "Grüezi! The parcel arrived, 😀 thanks."
)

MESSAGES = [
    (
        f"Hi, I am Anna: write to {EMAILS[0]} or {EMAILS[1]}, call {PHONES[0]} (office, "
        f"also {PHONES[1]}) or {PHONES[2]}, mobile {PHONES[3]}.",
        "Hi, I am Anna: write to <EMAIL> or <EMAIL>, call <PHONE> (office, "
        "also <PHONE>) or <PHONE>, mobile <PHONE>.",
    ),
    (
        f"Please refund to {IBANS[0]}; the old account was {IBANS[1]}, and {IBANS[2]} in Berlin.",
        "Please refund to <IBAN>; the old account was <IBAN>, and <IBAN> in Berlin.",
    ),
    (
        f"I paid with {CARDS[0]}, then {CARDS[1]} and {CARDS[2]}; reference {NOT_A_CARD}.",
        f"I paid with <CREDIT_CARD>, then <CREDIT_CARD> and <CREDIT_CARD>; reference {NOT_A_CARD}.",
    ),
    (
        f"My AHV number is {AHVS[0]}, my wife's {AHVS[1]}, our son's {AHVS[2]}.",
        "My AHV number is <AHV>, my wife's <AHV>, our son's <AHV>.",
    ),
    (NO_PII, NO_PII),
]


def compact(value: str) -> str:
    return re.sub(r"[ .+-]", "", value)


def leaked(haystack: str) -> list[str]:
    """The PII examples found in ``haystack``, as written or without their separators."""
    squeezed = compact(haystack)
    return [value for value in PII if value in haystack or compact(value) in squeezed]


def test_each_kind_of_pii_becomes_its_placeholder_and_other_text_stays():
    for original, expected in MESSAGES:
        assert redact(original) == expected
    assert redact(NO_PII) is NO_PII
    assert redact("Mail a@b.c (no TLD of one letter), call 12 34, user@localhost") == (
        "Mail a@b.c (no TLD of one letter), call 12 34, user@localhost"
    )
    # Numbers failing their checks stay: IBAN mod 97, AHV's EAN-13 digit.
    assert redact("CH93 0076 2011 6238 5295 8 and 756.1234.5678.98") == (
        "CH93 0076 2011 6238 5295 8 and 756.1234.5678.98"
    )
    # National numbers are read in REDACTION_PHONE_REGION; +country numbers anywhere.
    assert redact("030 901820 or +49 30 901820", region="DE") == "<PHONE> or <PHONE>"
    assert redact("+1 650-253-0000") == "<PHONE>"


def flask_cli(app, *args: str) -> Any:
    """``flask --app api ARGS`` in this process."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def _tenant(settings, name: str) -> tuple[str, dict[str, str]]:
    _, key = create_api_key(settings.database_url, name, actor="test")
    principal = authenticate(settings.database_url, key)
    return str(principal.tenant_id), {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def redacted_run(app, settings, gpu_worker, cpu_worker, tmp_path_factory) -> dict[str, Any]:
    """One tenant with redaction on sends every kind of text through a real API
    (gunicorn) and the workers: a batch of a conversation, an embed job with store
    and metadata, and a summary; then /v1/embeddings and /v1/search."""
    name = f"redacted-{uuid.uuid4().hex[:8]}"
    tenant_id, headers = _tenant(settings, name)
    result = flask_cli(app, "set-redaction", "--tenant", name, "on")
    assert result.exit_code == 0, result.output
    unknown = flask_cli(app, "set-redaction", "--tenant", "nobody-" + name, "on")
    assert unknown.exit_code == 2
    assert "no tenant named" in unknown.output

    conversation_id = f"pii-{uuid.uuid4().hex[:8]}"
    texts = [original for original, _ in MESSAGES]
    batch = {
        "jobs": [
            {
                "type": "conversation",
                "conversation_id": conversation_id,
                "user_id": "u-pii",
                "messages": [{"role": "user", "content": content} for content in texts],
                "method": "extractive",
            },
            {
                "type": "embed",
                "texts": texts,
                "store": True,
                "user_id": "u-pii",
                "metadata": {"contact": EMAILS[0], "note": f"call {PHONES[0]}", "n": 1},
            },
            {"type": "summarize", "text": " ".join(texts), "method": "extractive"},
        ]
    }
    log_dir = tmp_path_factory.mktemp("redaction-api")
    with api_server(settings, log_dir) as api:
        response = requests.post(
            f"{api.base_url}/v1/jobs/batch",
            json=batch,
            headers={**headers, "Prefer": "wait=60"},
            timeout=90,
        )
        assert response.status_code == 200, response.text
        jobs = response.json()["jobs"]
        assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
        embeddings = requests.post(
            f"{api.base_url}/v1/embeddings",
            json={"input": [MESSAGES[0][0], MESSAGES[0][1]], "model": "all-MiniLM-L6-v2"},
            headers=headers,
            timeout=60,
        )
        assert embeddings.status_code == 200, embeddings.text
        search = requests.post(
            f"{api.base_url}/v1/search",
            json={"query": f"refund to {IBANS[0]} for {EMAILS[0]}", "top_k": 100},
            headers=headers,
            timeout=60,
        )
        assert search.status_code == 200, search.text
        conversation = requests.get(
            f"{api.base_url}/v1/conversations/{conversation_id}", headers=headers, timeout=30
        ).json()
        api_log = api.log()
    return {
        "tenant_id": tenant_id,
        "jobs": jobs,
        "conversation": conversation,
        "embeddings": embeddings.json()["data"],
        "hits": search.json()["hits"],
        "api_log": api_log,
    }


def test_pii_never_reaches_postgresql_milvus_or_the_logs(
    redacted_run, settings, memory_store, gpu_worker, cpu_worker
):
    tenant_id = redacted_run["tenant_id"]
    expected = [redacted for _, redacted in MESSAGES]
    # What the API answers is what was stored: placeholders, the rest of the text kept.
    assert [m["content"] for m in redacted_run["conversation"]["messages"]] == expected
    assert leaked(redacted_run["conversation"]["summary"]["text"]) == []
    assert redacted_run["jobs"][2]["result"]["text"]
    assert leaked(str(redacted_run["jobs"])) == []

    with transaction(settings.database_url) as connection:
        jobs = connection.execute(
            text("SELECT params::text, result::text FROM jobs WHERE tenant_id = :t"),
            {"t": tenant_id},
        ).all()
        # Through the mapped columns, decrypted: the plaintext that was stored.
        params = connection.scalars(
            select(Job.params).where(Job.tenant_id == uuid.UUID(tenant_id))
        ).all()
        messages = connection.scalars(
            select(Message.content)
            .join(Conversation)
            .where(Conversation.tenant_id == uuid.UUID(tenant_id))
        ).all()
        summaries = connection.scalars(
            select(Summary.text)
            .join(Conversation, Conversation.id == Summary.conversation_id)
            .where(Conversation.tenant_id == uuid.UUID(tenant_id))
        ).all()
    assert len(jobs) == 3
    assert all("<IBAN>" in str(values) for values in params)
    assert leaked(" ".join(f"{params} {result}" for params, result in jobs)) == []
    assert sorted(messages) == sorted(expected)
    assert len(summaries) == 1
    assert leaked(summaries[0]) == []

    # Milvus: every snippet and metadata value of the tenant, and what search answers.
    stored = memory_store.search(tenant_id, np.ones(384) / np.sqrt(384), top_k=100)
    assert len(stored) == 2 * len(MESSAGES) + 1  # messages, texts, summary
    assert {"contact": "<EMAIL>", "note": "call <PHONE>", "n": 1} in [h.metadata for h in stored]
    assert leaked(" ".join(f"{hit.text} {hit.metadata}" for hit in stored)) == []
    assert len(redacted_run["hits"]) == len(stored)
    assert leaked(str(redacted_run["hits"])) == []

    # The model embedded the redacted text: the same vector as for the placeholders.
    vectors = [item["embedding"] for item in redacted_run["embeddings"]]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)

    for log in (redacted_run["api_log"], gpu_worker.log(), cpu_worker.log()):
        assert leaked(log) == []


def test_tenants_without_redaction_keep_their_text(client, settings, app):
    name = f"plain-{uuid.uuid4().hex[:8]}"
    tenant_id, headers = _tenant(settings, name)
    texts = [MESSAGES[0][0], f"Account {IBANS[0]}", NO_PII]
    response = client.post(
        "/v1/jobs/embed", json={"texts": texts, "metadata": {"contact": EMAILS[0]}}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    # A tenant that turned redaction on and off again: unchanged too.
    for state in ("on", "off"):
        assert flask_cli(app, "set-redaction", "--tenant", name, state).exit_code == 0
    with transaction(settings.database_url) as connection:
        params = connection.scalars(
            select(Job.params).where(Job.tenant_id == uuid.UUID(str(tenant_id)))
        ).one()
        audit = connection.execute(
            text("SELECT action, details FROM audit_log WHERE target_id = :n ORDER BY id"),
            {"n": name},
        ).all()
    assert params["texts"] == texts
    assert params["metadata"] == {"contact": EMAILS[0]}
    assert [(row.action, row.details) for row in audit] == [
        ("tenant.redact_pii", {"enabled": True}),
        ("tenant.redact_pii", {"enabled": False}),
    ]
