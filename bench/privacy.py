"""What PII redaction and encryption at rest cost on the job path, measured side by side.

    python -m bench.privacy [--jobs 300] [--database-url URL]

1. Redaction, in the API (services/redaction.py): microseconds of CPU per call
   on a one-text job's text (bench/texts.py) without PII and with an e-mail
   address and a phone number, on an eight-message conversation with PII in
   three messages, and on a text of MAX_TEXT_CHARS (32,000) without and with
   PII. A tenant without redaction pays nothing (the identity).
2. Encryption, per value: AES-256-GCM as stored (config/encryption.py) against
   Fernet, encrypt and decrypt of a 100-character message.
3. Encryption on a conversation job's statements, against PostgreSQL: per job,
   eight messages inserted as ``ConversationStore.persist`` does, read back
   twice (the transcript and the new messages), a summary upserted and read,
   through the mapped columns; with the real column type and with its
   encryption turned off in this process only (the same statements in clear).
   CPU ms per job of this process (SQLAlchemy and the cipher) and wall ms.
   PostgreSQL's own CPU is not counted: it stores ~1.4x the bytes.

It is a benchmark, not a test; it writes to its own database (convoq_bench).
"""

import argparse
import statistics
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from cryptography.fernet import Fernet
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bench.figures import record
from bench.stack import bench_settings
from bench.texts import text
from config.encryption import KeyRing, generate_key
from devstack.services import ensure_database
from devstack.stack import migrate
from models import Conversation, Message, Summary, Tenant
from models.db import session_scope, transaction
from models.encryption import EncryptedText, configure_encryption
from services.redaction import redact

PII_TAIL = " write to anna.muster@example.ch or call +41 44 668 18 00"
CONVERSATION = [text(i) for i in range(5)] + [
    "My IBAN is CH93 0076 2011 6238 5295 7, card 4111 1111 1111 1111.",
    "Reach me at +41 79 123 45 67 or peter@example.com.",
    "AHV 756.1234.5678.97, thanks.",
]


def micros(call: Callable[[], object], number: int) -> float:
    """Median CPU microseconds per call over five rounds of ``number`` calls."""
    rounds = timeit.repeat(call, number=number, repeat=5, timer=time.process_time)
    return statistics.median(rounds) / number * 1e6


def redaction_rows() -> list[tuple[str, float]]:
    redact("warm up +41 44 668 18 00")  # phonenumbers loads the region's metadata once
    long_plain = (text(7) + ". ") * (32_000 // (len(text(7)) + 2))
    long_pii = (text(7) + PII_TAIL + ". ") * (32_000 // (len(text(7) + PII_TAIL) + 2))
    many = f"32,000 characters, {long_pii.count('@')} e-mails and phones"
    return [
        ("one-text job, no PII", micros(lambda: redact(text(1)), 2000)),
        ("one-text job, e-mail and phone", micros(lambda: redact(text(1) + PII_TAIL), 200)),
        ("8 messages, 3 with PII", micros(lambda: list(map(redact, CONVERSATION)), 100)),
        ("32,000 characters, no PII", micros(lambda: redact(long_plain), 10)),
        (many, micros(lambda: redact(long_pii), 3)),
    ]


def cipher_rows() -> list[tuple[str, float]]:
    ring = KeyRing.parse(f"k1:{generate_key()}")
    fernet = Fernet(Fernet.generate_key())
    message = (text(3) + " " + text(4))[:100]
    sealed, token = ring.encrypt(message, "messages.content"), fernet.encrypt(message.encode())
    return [
        ("AES-256-GCM encrypt", micros(lambda: ring.encrypt(message, "messages.content"), 20000)),
        ("AES-256-GCM decrypt", micros(lambda: ring.decrypt(sealed, "messages.content"), 20000)),
        ("Fernet encrypt", micros(lambda: fernet.encrypt(message.encode()), 20000)),
        ("Fernet decrypt", micros(lambda: fernet.decrypt(token), 20000)),
        (f"stored size, bytes (plaintext {len(message)})", float(len(sealed))),
        ("Fernet size, bytes", float(len(token))),
    ]


@contextmanager
def encryption_off() -> Iterator[None]:
    """The same statements with the column type passing values through (this process only)."""
    bind, result = EncryptedText.process_bind_param, EncryptedText.process_result_value
    EncryptedText.process_bind_param = lambda self, value, dialect: value  # type: ignore[method-assign]
    EncryptedText.process_result_value = lambda self, value, dialect: value  # type: ignore[method-assign]
    try:
        yield
    finally:
        EncryptedText.process_bind_param, EncryptedText.process_result_value = bind, result


def conversation_jobs(database_url: str, jobs: int) -> tuple[float, float]:
    """CPU ms and wall ms per conversation job's statements on the encrypted columns."""
    with session_scope(database_url) as session:
        tenant = Tenant(name=f"bench-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        chat = Conversation(tenant_id=tenant.id, external_id="bench")
        session.add(chat)
        session.flush()
        chat_id = chat.id
    cpu, wall = time.process_time(), time.perf_counter()
    for job in range(jobs):
        first = job * len(CONVERSATION) + 1
        with transaction(database_url) as connection:
            connection.execute(
                pg_insert(Message),
                [
                    {"conversation_id": chat_id, "seq": first + i, "role": "user", "content": m}
                    for i, m in enumerate(CONVERSATION)
                ],
            )
        for _ in range(2):
            with transaction(database_url) as connection:
                rows = connection.execute(
                    select(Message.seq, Message.role, Message.content).where(
                        Message.conversation_id == chat_id,
                        Message.seq.between(first, first + len(CONVERSATION) - 1),
                    )
                ).all()
        assert [row.content for row in rows] == CONVERSATION
        summary = {"conversation_id": chat_id, "upto_seq": first, "text": CONVERSATION[0]}
        statement = pg_insert(Summary).values(**summary, method="extractive")
        with transaction(database_url) as connection:
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["conversation_id", "upto_seq"],
                    set_={"text": statement.excluded.text},
                )
            )
            connection.scalar(select(Summary.text).where(Summary.conversation_id == chat_id))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    with transaction(database_url) as connection:
        connection.execute(delete(Tenant).where(Tenant.name == tenant.name))
    return cpu / jobs * 1e3, wall / jobs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--database-url", default=bench_settings().database_url)
    args = parser.parse_args()

    print("PII redaction, CPU µs per call (median of 5 rounds):")
    for name, value in redaction_rows():
        print(f"  {name:<45} {value:10.1f}")
        record(f"redaction CPU per call: {name}", value, "µs")
    print("\nEncryption per value, CPU µs (100-character message):")
    for name, value in cipher_rows():
        print(f"  {name:<45} {value:10.1f}")
        if "bytes" in name:
            record(f"encryption: {name}", value, digits=0)
        else:
            record(f"encryption CPU per value: {name}", value, "µs")

    ensure_database(args.database_url)
    migrate(args.database_url)
    configure_encryption(KeyRing.parse(f"bench:{generate_key()}"))
    conversation_jobs(args.database_url, 20)  # warm up: connections, statement caches
    print(f"\nA conversation job's statements on the encrypted columns, {args.jobs} jobs:")
    print(f"  {'':<20} {'CPU ms/job':>12} {'wall ms/job':>12}")
    for round_ in range(2):
        for name, context in (("in clear", encryption_off), ("encrypted", nullcontext)):
            with context():
                cpu, wall = conversation_jobs(args.database_url, args.jobs)
            print(f"  {f'{name} (run {round_ + 1})':<20} {cpu:12.2f} {wall:12.2f}")
            where = f"conversation job's statements, {name} (run {round_ + 1})"
            record(f"{where}: CPU ms per job", cpu, "ms", digits=2)


if __name__ == "__main__":
    main()
