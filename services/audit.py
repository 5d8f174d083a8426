"""The audit log: who did what to which resource, when, and how it ended.

Rows are only ever added. They name resources by id and hold counts and
outcomes in ``details``, never the text of a message, summary or job: the log
outlives the data it records (an erasure's row survives the erasure).
"""

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, insert, or_, select

from models import AuditLog
from models.db import transaction
from services.jobs import InvalidCursor

AUDIT = AuditLog.__table__


@dataclass(frozen=True)
class AuditPage:
    entries: list[Row]
    next_cursor: str | None


def record(
    connection: Connection,
    *,
    tenant_id: uuid.UUID | None,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Add a row in the caller's transaction: it commits with what it records."""
    connection.execute(
        insert(AUDIT).values(
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=dict(details or {}),
        )
    )


def record_now(database_url: str, **fields: Any) -> None:
    """``record`` in a transaction of its own."""
    with transaction(database_url) as connection:
        record(connection, **fields)


def encode_cursor(entry: Row) -> str:
    payload = json.dumps({"t": entry.at.isoformat(), "id": entry.id})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        at, entry_id = datetime.fromisoformat(payload["t"]), payload["id"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc
    if not isinstance(entry_id, int) or isinstance(entry_id, bool) or at.tzinfo is None:
        raise InvalidCursor("cursor is not one this API returned")
    return at, entry_id


def entries(
    database_url: str,
    tenant_id: uuid.UUID,
    *,
    action: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int,
) -> AuditPage:
    """The tenant's entries, newest first, ``limit`` at a time (``ix_audit_log_tenant_at``)."""
    conditions = [AUDIT.c.tenant_id == tenant_id]
    if action is not None:
        conditions.append(AUDIT.c.action == action)
    if since is not None:
        conditions.append(AUDIT.c.at >= since)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        conditions.append(or_(AUDIT.c.at < at, and_(AUDIT.c.at == at, AUDIT.c.id < last_id)))
    query = (
        select(*AUDIT.c)
        .where(*conditions)
        .order_by(AUDIT.c.at.desc(), AUDIT.c.id.desc())
        .limit(bindparam("limit", limit + 1))
    )
    with transaction(database_url) as connection:
        rows = connection.execute(query).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(entries=rows, next_cursor=encode_cursor(rows[-1]) if has_more else None)
