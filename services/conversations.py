"""Conversations in PostgreSQL, and the state the conversation pipeline carries.

The pipeline is a chain across the queues (``tasks.conversation``)::

    persist (cpu) ─► summarize (gpu) ─► embed (gpu) ─► store (cpu)

Each step reads and returns a ``PipelineState``. Every write is idempotent,
so a step delivered twice changes nothing: a job's messages are tagged with
its id and stored once, summaries are unique per conversation and last
message, and vectors have deterministic ids.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from models import Conversation, Job, JobStatus, Message, Summary
from models.db import session_scope


class PipelineState(BaseModel):
    """What one conversation job's steps hand each other through the broker."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    conversation_pk: uuid.UUID
    conversation_id: str
    user_id: str | None
    first_seq: int
    last_seq: int
    summarize: bool
    embed: bool
    method: str
    max_length: int
    min_length: int
    steps: int
    done: int = 0
    summary: dict[str, Any] | None = None
    # One vector per new message, then the summary's when there is one.
    vectors: list[list[float]] | None = None


def pipeline_message(state: PipelineState) -> dict[str, Any]:
    """What one step of the chain passes to the next."""
    return {"kind": "conversation", "state": state.model_dump(mode="json")}


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

    def persist(self, job: Job, *, steps: int) -> PipelineState:
        """Store the job's messages at the end of its conversation, once.

        The conversation row is locked while sequence numbers are handed out,
        so two jobs posting to one conversation append one after the other.
        A job delivered again finds its messages tagged with its id.
        """
        params = job.params
        with session_scope(self.database_url) as session:
            conversation_pk = session.scalar(
                pg_insert(Conversation)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=job.tenant_id,
                    external_id=params["conversation_id"],
                    user_id=params.get("user_id"),
                )
                .on_conflict_do_update(
                    index_elements=["tenant_id", "external_id"],
                    set_={
                        "updated_at": func.now(),
                        "user_id": func.coalesce(Conversation.user_id, params.get("user_id")),
                    },
                )
                .returning(Conversation.id)
            )
            conversation = session.scalars(
                select(Conversation).where(Conversation.id == conversation_pk).with_for_update()
            ).one()
            conversation.last_job_id = job.id
            seqs = session.execute(
                select(func.min(Message.seq), func.max(Message.seq)).where(
                    Message.conversation_id == conversation_pk, Message.job_id == job.id
                )
            ).one()
            if seqs[0] is None:
                last = session.scalar(
                    select(func.coalesce(func.max(Message.seq), 0)).where(
                        Message.conversation_id == conversation_pk
                    )
                )
                session.execute(
                    insert(Message),
                    [
                        {
                            "conversation_id": conversation_pk,
                            "seq": last + offset,
                            "role": message["role"],
                            "content": message["content"],
                            "job_id": job.id,
                        }
                        for offset, message in enumerate(params["messages"], start=1)
                    ],
                )
                seqs = (last + 1, last + len(params["messages"]))
            return PipelineState(
                job_id=job.id,
                tenant_id=job.tenant_id,
                conversation_pk=conversation_pk,
                conversation_id=conversation.external_id,
                user_id=conversation.user_id,
                first_seq=seqs[0],
                last_seq=seqs[1],
                summarize=params["summarize"],
                embed=params["embed"],
                method=params["method"],
                max_length=params["max_length"],
                min_length=params["min_length"],
                steps=steps,
            )

    def transcript(self, state: PipelineState) -> str:
        """The conversation up to the job's last message, one ``role: content`` per line."""
        with session_scope(self.database_url) as session:
            rows = session.execute(
                select(Message.role, Message.content)
                .where(
                    Message.conversation_id == state.conversation_pk,
                    Message.seq <= state.last_seq,
                )
                .order_by(Message.seq)
            )
            return "\n".join(f"{role}: {content}" for role, content in rows)

    def new_messages(self, state: PipelineState) -> list[str]:
        with session_scope(self.database_url) as session:
            return list(
                session.scalars(
                    select(Message.content)
                    .where(
                        Message.conversation_id == state.conversation_pk,
                        Message.seq.between(state.first_seq, state.last_seq),
                    )
                    .order_by(Message.seq)
                )
            )

    def texts_to_embed(self, state: PipelineState) -> list[str]:
        """The job's new messages, then its summary when it made one."""
        texts = self.new_messages(state)
        if state.summary is not None and state.summary["text"]:
            texts.append(state.summary["text"])
        return texts

    def save_summary(self, state: PipelineState) -> None:
        summary = state.summary
        if summary is None:
            return
        values = {
            "text": summary["text"],
            "method": summary["method"],
            "model": summary["model"],
            "input_tokens": summary["input_tokens"],
            "output_tokens": summary["output_tokens"],
        }
        with session_scope(self.database_url) as session:
            session.execute(
                pg_insert(Summary)
                .values(conversation_id=state.conversation_pk, upto_seq=state.last_seq, **values)
                .on_conflict_do_update(index_elements=["conversation_id", "upto_seq"], set_=values)
            )

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


def processing_status(view: ConversationView) -> str:
    """``idle`` with no job yet, else the status of the job that posted last."""
    if view.last_job is None:
        return "idle"
    return JobStatus(view.last_job.status).value
