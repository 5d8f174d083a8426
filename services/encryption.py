"""Key rotation: rewrite stored text (messages, summaries, jobs' texts) under the current key.

Rows are read and written in batches of ``batch_size``, each batch in its own
transaction, so a large table is never locked whole and a stopped run resumes
where it was (rows already under the current key are skipped). A row is
rewritten only if its stored value is still the one read: a summary replaced
meanwhile by a worker keeps the new text.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, array
from sqlalchemy.orm import InstrumentedAttribute

from config.encryption import VERSION
from models import Job, Message, Summary
from models.db import transaction
from models.encryption import SEALED, key_ring, unseal

# The encrypted columns: (what the count is called, primary key, column, its
# stored form's type, the primary key below every other).
ENCRYPTED_COLUMNS: tuple[
    tuple[str, InstrumentedAttribute, InstrumentedAttribute, Any, Any], ...
] = (
    ("messages", Message.id, Message.content, Text, 0),
    ("summaries", Summary.id, Summary.text, Text, 0),
    ("jobs.params", Job.id, Job.params, JSONB, uuid.UUID(int=0)),
    ("jobs.result", Job.id, Job.result, JSONB, uuid.UUID(int=0)),
)


@dataclass(frozen=True)
class ReencryptResult:
    kid: str
    rewritten: dict[str, int]
    # Rows not under the current key after the run (written meanwhile by a process
    # still on an older key list, say): run again before dropping an old key.
    remaining: dict[str, int]


def _not_current(column: InstrumentedAttribute, stored_type: Any, kid: str) -> ColumnElement[bool]:
    """Rows stored in clear, or under another key than ``kid``."""
    current = f"{VERSION}:{kid}:"
    raw = type_coerce(column, stored_type)
    if stored_type is Text:
        return ~raw.startswith(current, autoescape=True)
    sealed = raw[SEALED].astext
    return or_(
        and_(sealed.is_not(None), ~sealed.startswith(current, autoescape=True)),
        raw.has_any(array(list(column.type.sealed_keys))),
    )


def _plain(value: Any, column: InstrumentedAttribute) -> Any:
    purpose = column.type.purpose
    if isinstance(value, str):
        return key_ring().decrypt(value, purpose)
    return unseal(value, purpose)


def reencrypt(database_url: str, batch_size: int = 500) -> ReencryptResult:
    """Encrypt every legacy (plaintext) row and every row under an older key with the
    current key: message and summary text, and the texts jobs hold."""
    ring = key_ring()
    rewritten, remaining = {}, {}
    for name, pk, column, stored_type, last_id in ENCRYPTED_COLUMNS:
        raw = type_coerce(column, stored_type)
        stale = _not_current(column, stored_type, ring.current)
        rewrite = (
            update(pk.class_)
            .where(pk == bindparam("row_id"), raw == bindparam("old", type_=stored_type))
            .values({column.key: bindparam("new", type_=column.type)})
        )
        done = 0
        while True:
            with transaction(database_url) as connection:
                rows = connection.execute(
                    select(pk, raw).where(pk > last_id, stale).order_by(pk).limit(batch_size)
                ).all()
                if not rows:
                    break
                connection.execute(
                    rewrite,
                    [
                        {"row_id": row_id, "old": old, "new": _plain(old, column)}
                        for row_id, old in rows
                    ],
                )
            done += len(rows)
            last_id = rows[-1][0]
        rewritten[name] = done
        with transaction(database_url) as connection:
            remaining[name] = connection.scalar(
                select(func.count()).select_from(pk.class_).where(stale)
            )
    return ReencryptResult(ring.current, rewritten, remaining)
