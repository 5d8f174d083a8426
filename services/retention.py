"""Retention: each tenant's data older than its limit is purged, from PostgreSQL and Milvus.

A tenant's limit is ``tenants.retention_days``, else the deployment's
``RETENTION_DAYS``; 0 (or neither set) keeps its data forever. A run
(``tasks.maintenance.purge_retention``, sent by Celery beat) purges, per
tenant, what was created before ``now() - limit``:

1. messages, and their vectors;
2. summaries, and a conversation's summary vector once none of its summaries
   is left (the record is the latest summary's);
3. conversations left with no message and no summary, untouched since the
   cutoff;
4. finished jobs (succeeded, failed, canceled) with their parameters and
   results, and the vectors of embed jobs that stored them. Queued and running
   jobs are left to finish.

Every step works in batches of ``batch_rows``: select a batch, delete its
vectors from Milvus, then delete its rows. Vectors go first, so a failure in
between leaves rows whose vectors are gone, found again by the next run,
never vectors whose rows are gone, which no run could find again (their ids
are made from the rows). Deleting what is already gone changes nothing, so a
run that stops anywhere, or runs twice, is safe. A run stops taking batches at
its deadline; the next one goes on.

Each tenant whose run purged something gets one ``retention.purge`` audit
entry with the counts.
"""

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, any_, bindparam, case, delete, exists, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY

from models import FINISHED_STATUSES, Conversation, Job, JobType, Message, Summary, Tenant
from models.db import transaction
from services import audit
from services.memory import embed_record_id, message_record_id, summary_record_id
from vectorstore import MemoryStore

log = logging.getLogger(__name__)

# Rows per statement: each transaction and each Milvus delete stays small.
BATCH_ROWS = 500
# Ids per Milvus delete expression (each id is 64 characters).
VECTOR_IDS_PER_DELETE = 250


@dataclass
class Purged:
    """What a run purged for one tenant; ``complete`` is False when it stopped at its
    deadline with more left."""

    messages: int = 0
    summaries: int = 0
    conversations: int = 0
    jobs: int = 0
    vectors: int = 0  # ids deleted from Milvus (whether or not each was there)
    complete: bool = True

    @property
    def rows(self) -> int:
        return self.messages + self.summaries + self.conversations + self.jobs


def tenant_limits(database_url: str, default_days: int | None) -> list[tuple[uuid.UUID, int]]:
    """Each tenant whose data has a limit, with its limit in days."""
    days = func.coalesce(Tenant.retention_days, default_days or 0)
    with transaction(database_url) as connection:
        rows = connection.execute(
            select(Tenant.id, days).where(days > 0).order_by(Tenant.created_at)
        ).all()
    return [(tenant_id, int(limit)) for tenant_id, limit in rows]


def _ids(column: Any, values: Sequence[Any]) -> Any:
    return column == any_(bindparam(f"{column.key}s", list(values), type_=ARRAY(column.type)))


class _TenantPurge:
    def __init__(
        self,
        database_url: str,
        memory: MemoryStore,
        tenant_id: uuid.UUID,
        cutoff: datetime,
        batch_rows: int,
        deadline: float | None,
    ) -> None:
        self.database_url = database_url
        self.memory = memory
        self.tenant = str(tenant_id)
        self.tenant_id = tenant_id
        self.cutoff = cutoff
        self.batch_rows = batch_rows
        self.deadline = deadline
        self.purged = Purged()

    def out_of_time(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.purged.complete = False
            return True
        return False

    def select(self, query: Select) -> list[Any]:
        with transaction(self.database_url) as connection:
            return connection.execute(query.limit(self.batch_rows)).all()

    def forget_vectors(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), VECTOR_IDS_PER_DELETE):
            self.memory.delete(self.tenant, ids=ids[start : start + VECTOR_IDS_PER_DELETE])
        self.purged.vectors += len(ids)

    def _old_conversations(self) -> Any:
        """A conversation made after the cutoff holds nothing made before it."""
        return (Conversation.tenant_id == self.tenant_id, Conversation.created_at < self.cutoff)

    def messages(self) -> bool:
        """One batch of messages; True when a full batch was deleted (more may be left)."""
        rows = self.select(
            select(Message.id, Conversation.external_id, Message.seq)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(*self._old_conversations(), Message.created_at < self.cutoff)
        )
        if not rows:
            return False
        self.forget_vectors(
            [message_record_id(self.tenant, row.external_id, row.seq) for row in rows]
        )
        with transaction(self.database_url) as connection:
            connection.execute(delete(Message).where(_ids(Message.id, [row.id for row in rows])))
        self.purged.messages += len(rows)
        return len(rows) == self.batch_rows

    def summaries(self) -> bool:
        rows = self.select(
            select(Summary.id, Summary.conversation_id, Conversation.external_id)
            .join(Conversation, Conversation.id == Summary.conversation_id)
            .where(*self._old_conversations(), Summary.created_at < self.cutoff)
        )
        if not rows:
            return False
        conversations = {row.conversation_id: row.external_id for row in rows}
        with transaction(self.database_url) as connection:
            kept = set(
                connection.scalars(
                    select(Summary.conversation_id)
                    .where(
                        _ids(Summary.conversation_id, list(conversations)),
                        Summary.created_at >= self.cutoff,
                    )
                    .distinct()
                )
            )
        self.forget_vectors(
            [
                summary_record_id(self.tenant, external_id)
                for pk, external_id in conversations.items()
                if pk not in kept
            ]
        )
        with transaction(self.database_url) as connection:
            connection.execute(delete(Summary).where(_ids(Summary.id, [row.id for row in rows])))
        self.purged.summaries += len(rows)
        return len(rows) == self.batch_rows

    def conversations(self) -> bool:
        emptied = (
            select(Conversation.id)
            .where(
                *self._old_conversations(),
                Conversation.updated_at < self.cutoff,
                ~exists().where(Message.conversation_id == Conversation.id),
                ~exists().where(Summary.conversation_id == Conversation.id),
            )
            .limit(self.batch_rows)
        )
        with transaction(self.database_url) as connection:
            # updated_at is checked again on the row itself: a job posting to the
            # conversation meanwhile keeps it.
            deleted = connection.execute(
                delete(Conversation).where(
                    Conversation.id.in_(emptied), Conversation.updated_at < self.cutoff
                )
            ).rowcount
        self.purged.conversations += deleted
        return deleted == self.batch_rows

    def jobs(self) -> bool:
        finished = or_(*(Job.status == status for status in FINISHED_STATUSES))
        stored_texts = case(
            (
                (Job.type == JobType.EMBED) & Job.params["store"].as_boolean(),
                # Its texts are sealed (models/encryption.py); the total is their count.
                Job.progress_total,
            ),
            else_=0,
        )
        rows = self.select(
            select(Job.id, stored_texts.label("stored_texts")).where(
                Job.tenant_id == self.tenant_id,
                Job.created_at < self.cutoff,
                Job.finished_at < self.cutoff,
                finished,
            )
        )
        if not rows:
            return False
        self.forget_vectors(
            [
                embed_record_id(self.tenant, str(row.id), position)
                for row in rows
                for position in range(row.stored_texts or 0)
            ]
        )
        with transaction(self.database_url) as connection:
            connection.execute(delete(Job).where(_ids(Job.id, [row.id for row in rows]), finished))
        self.purged.jobs += len(rows)
        return len(rows) == self.batch_rows

    def run(self) -> Purged:
        for step in (self.messages, self.summaries, self.conversations, self.jobs):
            while True:
                if self.out_of_time():
                    return self.purged
                if not step():
                    break
        return self.purged


def _cutoff(connection: Connection, days: int) -> datetime:
    return connection.execute(select(func.now() - func.make_interval(0, 0, 0, days))).scalar_one()


def purge_tenant(
    database_url: str,
    memory: MemoryStore,
    tenant_id: uuid.UUID,
    days: int,
    *,
    batch_rows: int = BATCH_ROWS,
    deadline: float | None = None,
) -> Purged:
    """Purge what the tenant stored more than ``days`` days ago; audited when any was."""
    with transaction(database_url) as connection:
        cutoff = _cutoff(connection, days)
    purged = _TenantPurge(database_url, memory, tenant_id, cutoff, batch_rows, deadline).run()
    if purged.rows:
        audit.record_now(
            database_url,
            tenant_id=tenant_id,
            actor="retention",
            action="retention.purge",
            target_type="tenant",
            target_id=str(tenant_id),
            details={
                "outcome": "completed" if purged.complete else "partial",
                "retention_days": days,
                "cutoff": cutoff.isoformat(),
                **{key: value for key, value in asdict(purged).items() if key != "complete"},
            },
        )
    return purged


def purge_expired(
    database_url: str,
    memory: MemoryStore,
    *,
    default_days: int | None,
    batch_rows: int = BATCH_ROWS,
    deadline: float | None = None,
) -> dict[uuid.UUID, Purged]:
    """One retention run over every tenant with a limit; what it purged, by tenant."""
    purged: dict[uuid.UUID, Purged] = {}
    for tenant_id, days in tenant_limits(database_url, default_days):
        if deadline is not None and time.monotonic() >= deadline:
            break
        purged[tenant_id] = result = purge_tenant(
            database_url, memory, tenant_id, days, batch_rows=batch_rows, deadline=deadline
        )
        if result.rows:
            log.info(
                "retention purged",
                extra={"tenant_id": str(tenant_id), "days": days, **asdict(result)},
            )
    return purged
