"""Key rotation: rewrite stored message and summary text under the current key.

Rows are read and written in batches of ``batch_size``, each batch in its own
transaction, so a large table is never locked whole and a stopped run resumes
where it was (rows already under the current key are skipped). A row is
rewritten only if its stored value is still the one read: a summary replaced
meanwhile by a worker keeps the new text.
"""

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Text, bindparam, func, select, type_coerce, update
from sqlalchemy.orm import InstrumentedAttribute

from config.encryption import VERSION
from models import Message, Summary
from models.db import transaction
from models.encryption import key_ring

# The encrypted columns: (what the count is called, primary key, column).
ENCRYPTED_COLUMNS: tuple[tuple[str, InstrumentedAttribute, InstrumentedAttribute], ...] = (
    ("messages", Message.id, Message.content),
    ("summaries", Summary.id, Summary.text),
)


@dataclass(frozen=True)
class ReencryptResult:
    kid: str
    rewritten: dict[str, int]
    # Rows not under the current key after the run (written meanwhile by a process
    # still on an older key list, say): run again before dropping an old key.
    remaining: dict[str, int]


def _not_current(column: InstrumentedAttribute, kid: str) -> ColumnElement[bool]:
    return ~type_coerce(column, Text).startswith(f"{VERSION}:{kid}:", autoescape=True)


def reencrypt(database_url: str, batch_size: int = 500) -> ReencryptResult:
    """Encrypt every legacy (plaintext) row and every row under an older key with the
    current key."""
    ring = key_ring()
    rewritten, remaining = {}, {}
    for name, pk, column in ENCRYPTED_COLUMNS:
        raw = type_coerce(column, Text)
        purpose = column.type.purpose
        rewrite = (
            update(pk.class_)
            .where(pk == bindparam("row_id"), raw == bindparam("old", type_=Text))
            .values({column.key: bindparam("new", type_=column.type)})
        )
        done, last_id = 0, 0
        while True:
            with transaction(database_url) as connection:
                rows = connection.execute(
                    select(pk, raw)
                    .where(pk > last_id, _not_current(column, ring.current))
                    .order_by(pk)
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                connection.execute(
                    rewrite,
                    [
                        {"row_id": row_id, "old": old, "new": ring.decrypt(old, purpose)}
                        for row_id, old in rows
                    ],
                )
            done += len(rows)
            last_id = rows[-1][0]
        rewritten[name] = done
        with transaction(database_url) as connection:
            remaining[name] = connection.scalar(
                select(func.count())
                .select_from(pk.class_)
                .where(_not_current(column, ring.current))
            )
    return ReencryptResult(ring.current, rewritten, remaining)
