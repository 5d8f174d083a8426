"""Conversations in PostgreSQL: the messages a conversation job stores, and what its
later steps read back.

The pipeline (``tasks.conversation``) passes only the job's id from step to
step::

    persist (cpu) ─► summarize (gpu) ─► embed (gpu) ─► store (cpu)

Each step reads what it needs by that id: the job's messages are tagged with
it, its summary is the conversation's summary up to its last message, and the
vectors the embed step made wait on the job row. Every write is idempotent,
so a step delivered twice changes nothing: a job's messages are stored once,
summaries are unique per conversation and last message, and vectors have
deterministic ids.
"""

import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.errors import ForeignKeyViolation
from sqlalchemy import Connection, Row, exists, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from models import Conversation, Job, JobStatus, Message, Summary
from models.db import session_scope, transaction

# What a summary row keeps of ``inference.summary.Summary``.
SUMMARY_FIELDS = ("text", "method", "model", "input_tokens", "output_tokens", "chunks", "backend")
SUMMARY_COLUMNS = tuple(getattr(Summary, name) for name in SUMMARY_FIELDS)


@dataclass(frozen=True)
class ConversationJob:
    """One conversation job as its later steps see it: where its messages are."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    conversation_pk: uuid.UUID
    conversation_id: str
    user_id: str | None
    first_seq: int
    last_seq: int
    params: dict[str, Any]

    @property
    def summarize(self) -> bool:
        return bool(self.params["summarize"])

    @property
    def embed(self) -> bool:
        return bool(self.params["embed"])


class ConversationNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ConversationView:
    conversation: Conversation
    messages: list[Message]
    summary: Summary | None
    last_job: Job | None


class ConversationStore:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def persist(self, job: Row) -> tuple[int, int] | None:
        """Store the job's messages at the end of its conversation, once; their seq range,
        or None when the job is no longer running (canceled, or erased).

        The conversation row is locked while sequence numbers are handed out,
        so two jobs posting to one conversation append one after the other.
        A job delivered again finds its messages tagged with its id.

        The job's row is share-locked, and must say running, in the statement
        that creates the conversation: an erasure (``services.erasure``), which
        cancels the job first, either waits for these messages and deletes
        them, or commits first, and then nothing is written.
        """
        params = job.params
        running = (
            select(Job.id)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
            .with_for_update(read=True)
        )
        conversation_table = Conversation.__table__.c
        new_conversation = select(
            literal(uuid.uuid4(), conversation_table.id.type),
            literal(job.tenant_id, conversation_table.tenant_id.type),
            literal(params["conversation_id"], conversation_table.external_id.type),
            literal(params.get("user_id"), conversation_table.user_id.type),
        ).where(exists(running))
        with session_scope(self.database_url) as session:
            conversation_pk = session.scalar(
                pg_insert(Conversation)
                .from_select(["id", "tenant_id", "external_id", "user_id"], new_conversation)
                .on_conflict_do_update(
                    index_elements=["tenant_id", "external_id"],
                    set_={
                        "updated_at": func.now(),
                        "user_id": func.coalesce(Conversation.user_id, params.get("user_id")),
                    },
                )
                .returning(Conversation.id)
            )
            if conversation_pk is None:
                return None
            conversation = session.scalars(
                select(Conversation).where(Conversation.id == conversation_pk).with_for_update()
            ).one()
            conversation.last_job_id = job.id
            seqs = session.execute(
                select(func.min(Message.seq), func.max(Message.seq)).where(
                    Message.conversation_id == conversation_pk, Message.job_id == job.id
                )
            ).one()
            if seqs[0] is not None:
                return seqs[0], seqs[1]
            last = session.scalar(
                select(func.coalesce(func.max(Message.seq), 0)).where(
                    Message.conversation_id == conversation_pk
                )
            )
            messages = self._new_messages(session, conversation_pk, params["messages"])
            if not messages:
                return last + 1, last
            session.execute(
                pg_insert(Message).on_conflict_do_nothing(
                    index_elements=["conversation_id", "client_id"],
                    index_where=Message.client_id.is_not(None),
                ),
                [
                    {
                        "conversation_id": conversation_pk,
                        "seq": last + offset,
                        "role": message["role"],
                        "content": message["content"],
                        "job_id": job.id,
                        "client_id": message.get("id"),
                    }
                    for offset, message in enumerate(messages, start=1)
                ],
            )
            return last + 1, last + len(messages)

    @staticmethod
    def _new_messages(
        session: Any, conversation_pk: uuid.UUID, messages: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The messages without a client id the conversation (or an earlier one of them)
        already has. The conversation row is locked: no other job adds one meanwhile."""
        client_ids = {message["id"] for message in messages if message.get("id") is not None}
        if not client_ids:
            return list(messages)
        seen = set(
            session.scalars(
                select(Message.client_id).where(
                    Message.conversation_id == conversation_pk,
                    Message.client_id.in_(client_ids),
                )
            )
        )
        new = []
        for message in messages:
            client_id = message.get("id")
            if client_id is not None:
                if client_id in seen:
                    continue
                seen.add(client_id)
            new.append(message)
        return new

    def jobs(self, jobs: Sequence[Row]) -> dict[uuid.UUID, ConversationJob]:
        """Where the messages of each (persisted) job are, in one query."""
        if not jobs:
            return {}
        by_id = {job.id: job for job in jobs}
        with transaction(self.database_url) as connection:
            rows = connection.execute(
                select(
                    Message.job_id,
                    Conversation.id,
                    Conversation.external_id,
                    Conversation.user_id,
                    func.min(Message.seq),
                    func.max(Message.seq),
                )
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.job_id.in_(list(by_id)))
                .group_by(Message.job_id, Conversation.id)
            ).all()
        return {
            job_id: ConversationJob(
                job_id=job_id,
                tenant_id=by_id[job_id].tenant_id,
                conversation_pk=pk,
                conversation_id=external_id,
                user_id=user_id,
                first_seq=first,
                last_seq=last,
                params=by_id[job_id].params,
            )
            for job_id, pk, external_id, user_id, first, last in rows
        }

    def _messages(
        self, jobs: Sequence[ConversationJob], *, whole: bool
    ) -> dict[uuid.UUID, list[Row]]:
        """Each job's new messages, or (``whole``) its conversation up to its last one."""
        if not jobs:
            return {}
        by_conversation: dict[uuid.UUID, list[Row]] = defaultdict(list)
        first = 1 if whole else min(job.first_seq for job in jobs)
        with transaction(self.database_url) as connection:
            rows = connection.execute(
                select(Message.conversation_id, Message.seq, Message.role, Message.content)
                .where(Message.conversation_id.in_({job.conversation_pk for job in jobs}))
                .where(Message.seq.between(first, max(job.last_seq for job in jobs)))
                .order_by(Message.conversation_id, Message.seq)
            ).all()
        for row in rows:
            by_conversation[row.conversation_id].append(row)
        return {
            job.job_id: [
                row
                for row in by_conversation[job.conversation_pk]
                if (whole or row.seq >= job.first_seq) and row.seq <= job.last_seq
            ]
            for job in jobs
        }

    def transcripts(self, jobs: Sequence[ConversationJob]) -> dict[uuid.UUID, str]:
        """For each job, its conversation up to its last message, one ``role: content``
        per line: what is summarised."""
        return {
            job_id: "\n".join(f"{row.role}: {row.content}" for row in rows)
            for job_id, rows in self._messages(jobs, whole=True).items()
        }

    def new_messages(self, jobs: Sequence[ConversationJob]) -> dict[uuid.UUID, list[str]]:
        return {
            job_id: [row.content for row in rows]
            for job_id, rows in self._messages(jobs, whole=False).items()
        }

    def save_summaries(self, summaries: Mapping[uuid.UUID, tuple[ConversationJob, dict]]) -> None:
        """Upsert each job's summary (the values of ``inference.summary.Summary``).

        A summary of a conversation erased meanwhile (``services.erasure``) is left
        out, not stored and not an error: the summaries of the other jobs of a
        batch are stored all the same.
        """
        rows = [
            {
                "conversation_id": job.conversation_pk,
                "upto_seq": job.last_seq,
                **{name: summary[name] for name in SUMMARY_FIELDS},
            }
            for job, summary in summaries.values()
        ]
        if not rows:
            return
        try:
            with transaction(self.database_url) as connection:
                self._upsert_summaries(connection, rows)
        except IntegrityError as exc:
            if not isinstance(exc.orig, ForeignKeyViolation):
                raise
            with transaction(self.database_url) as connection:
                # Key-share-locked: these stay until the summaries are committed.
                present = set(
                    connection.scalars(
                        select(Conversation.id)
                        .where(Conversation.id.in_({row["conversation_id"] for row in rows}))
                        .with_for_update(key_share=True)
                    )
                )
                rows = [row for row in rows if row["conversation_id"] in present]
                if rows:
                    self._upsert_summaries(connection, rows)

    @staticmethod
    def _upsert_summaries(connection: Connection, rows: list[dict[str, Any]]) -> None:
        statement = pg_insert(Summary).values(rows)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["conversation_id", "upto_seq"],
                set_={name: statement.excluded[name] for name in SUMMARY_FIELDS},
            )
        )

    def summaries(self, jobs: Sequence[ConversationJob]) -> dict[uuid.UUID, dict[str, Any]]:
        """The summary each job made (those that made one)."""
        wanted = [job for job in jobs if job.summarize]
        if not wanted:
            return {}
        with transaction(self.database_url) as connection:
            rows = connection.execute(
                select(Summary.conversation_id, Summary.upto_seq, *SUMMARY_COLUMNS).where(
                    Summary.conversation_id.in_({job.conversation_pk for job in wanted})
                )
            ).all()
        found = {(row.conversation_id, row.upto_seq): row for row in rows}
        answer = {}
        for job in wanted:
            row = found.get((job.conversation_pk, job.last_seq))
            if row is not None:
                answer[job.job_id] = {name: getattr(row, name) for name in SUMMARY_FIELDS}
        return answer

    def is_latest_summary(self, job: ConversationJob) -> bool:
        """Whether the summary up to the job's last message is the conversation's latest."""
        with transaction(self.database_url) as connection:
            latest = connection.scalar(
                select(func.max(Summary.upto_seq)).where(
                    Summary.conversation_id == job.conversation_pk
                )
            )
        return latest is None or latest <= job.last_seq

    def view(
        self, tenant_id: uuid.UUID, external_id: str, *, after_seq: int = 0, limit: int
    ) -> ConversationView:
        """A conversation of this tenant with up to ``limit`` messages after ``after_seq``."""
        with session_scope(self.database_url) as session:
            conversation = session.scalar(
                select(Conversation).where(
                    Conversation.tenant_id == tenant_id, Conversation.external_id == external_id
                )
            )
            if conversation is None:
                raise ConversationNotFound(external_id)
            messages = list(
                session.scalars(
                    select(Message)
                    .where(Message.conversation_id == conversation.id, Message.seq > after_seq)
                    .order_by(Message.seq)
                    .limit(limit)
                )
            )
            summary = session.scalar(
                select(Summary)
                .where(Summary.conversation_id == conversation.id)
                .order_by(Summary.upto_seq.desc())
                .limit(1)
            )
            last_job = (
                session.get(Job, conversation.last_job_id) if conversation.last_job_id else None
            )
            return ConversationView(conversation, messages, summary, last_job)

    def user_of(self, tenant_id: uuid.UUID, external_id: str) -> tuple[bool, str | None]:
        """(exists, user_id) of a conversation of this tenant."""
        with session_scope(self.database_url) as session:
            row = session.execute(
                select(Conversation.user_id).where(
                    Conversation.tenant_id == tenant_id, Conversation.external_id == external_id
                )
            ).first()
        return (row is not None, row[0] if row else None)

    def users_of(
        self, tenant_id: uuid.UUID, external_ids: Collection[str]
    ) -> dict[str, str | None]:
        """The user_id of each of these conversations of this tenant that exists, in one query."""
        if not external_ids:
            return {}
        with session_scope(self.database_url) as session:
            rows = session.execute(
                select(Conversation.external_id, Conversation.user_id).where(
                    Conversation.tenant_id == tenant_id,
                    Conversation.external_id.in_(list(external_ids)),
                )
            ).all()
        return {row.external_id: row.user_id for row in rows}


def processing_status(view: ConversationView) -> str:
    """``idle`` with no job yet, else the status of the job that posted last."""
    if view.last_job is None:
        return "idle"
    return JobStatus(view.last_job.status).value
