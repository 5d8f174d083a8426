"""Whether the search index agrees with PostgreSQL, which is the source of truth.

Every vector in Milvus stands for one row: a message, the latest summary of
a conversation, or a text of an embed job that asked for ``store``. Record
ids are deterministic (``vectorstore.memory_id``), so the id each row's
vector must have is known from the row alone. A vector whose row is gone, or
whose snippet is not the row's text any more, is *stale*: search would return
what no longer exists. A row that a finished job indexed but whose vector is
absent is *missing*.

This reads a tenant's rows and vectors whole: it is for tests, for
``flask --app api check-memory`` and for repairs, not for the job path.
"""

import uuid
from dataclasses import dataclass, field

from sqlalchemy import select

from models import Conversation, Job, JobStatus, JobType, Message, Summary
from models.db import transaction
from services.memory import embed_record_id, message_record_id, summary_record_id
from vectorstore import SNIPPET_MAX_BYTES, MemoryStore, truncate_utf8


@dataclass(frozen=True)
class MemoryAudit:
    """What the index holds that it should not, and what it lacks."""

    stale: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.stale and not self.missing


def expected_vectors(database_url: str, tenant_id: uuid.UUID) -> tuple[dict[str, str], set[str]]:
    """The id and text of every row of the tenant that may have a vector, and the ids
    of those a succeeded job still on record indexed (which must have one)."""
    tenant = str(tenant_id)
    allowed: dict[str, str] = {}
    required: set[str] = set()
    with transaction(database_url) as connection:
        conversations = dict(
            connection.execute(
                select(Conversation.id, Conversation.external_id).where(
                    Conversation.tenant_id == tenant_id
                )
            ).all()
        )
        message_ids: dict[tuple[uuid.UUID, int], str] = {}
        for row in connection.execute(
            select(Message.conversation_id, Message.seq, Message.content).where(
                Message.conversation_id.in_(list(conversations))
            )
        ):
            external = conversations[row.conversation_id]
            key = message_record_id(tenant, external, row.seq)
            message_ids[(row.conversation_id, row.seq)] = key
            allowed[key] = row.content
        latest = {
            row.conversation_id: row
            for row in connection.execute(
                select(Summary.conversation_id, Summary.upto_seq, Summary.text)
                .where(Summary.conversation_id.in_(list(conversations)))
                .order_by(Summary.conversation_id, Summary.upto_seq)
            )
        }
        summary_ids: dict[tuple[uuid.UUID, int], str] = {}
        for conversation_pk, row in latest.items():
            if row.text:
                key = summary_record_id(tenant, conversations[conversation_pk])
                summary_ids[(conversation_pk, row.upto_seq)] = key
                allowed[key] = row.text
        jobs = connection.execute(
            select(Job.id, Job.type, Job.params, Job.result).where(
                Job.tenant_id == tenant_id, Job.status == JobStatus.SUCCEEDED
            )
        ).all()
        by_pk = {external: pk for pk, external in conversations.items()}
        for job in jobs:
            if job.type == JobType.EMBED and job.params.get("store"):
                for position, text in enumerate(job.params["texts"]):
                    key = embed_record_id(tenant, str(job.id), position)
                    allowed[key] = text
                    required.add(key)
            elif job.type == JobType.CONVERSATION and job.params.get("embed") and job.result:
                pk = by_pk.get(job.params["conversation_id"])
                seqs = job.result["messages"]
                if pk is None or seqs["first_seq"] is None:
                    continue
                for seq in range(seqs["first_seq"], seqs["last_seq"] + 1):
                    if (pk, seq) in message_ids:
                        required.add(message_ids[(pk, seq)])
                if (pk, seqs["last_seq"]) in summary_ids:
                    required.add(summary_ids[(pk, seqs["last_seq"])])
    return allowed, required


def audit_memory(database_url: str, memory: MemoryStore, tenant_id: uuid.UUID) -> MemoryAudit:
    """Compare the tenant's vectors with its rows (see the module's docstring)."""
    allowed, required = expected_vectors(database_url, tenant_id)
    indexed = memory.snippets(str(tenant_id))
    stale = sorted(
        key
        for key, snippet in indexed.items()
        if key not in allowed or snippet != truncate_utf8(allowed[key], SNIPPET_MAX_BYTES)
    )
    return MemoryAudit(stale=stale, missing=sorted(required - indexed.keys()))
