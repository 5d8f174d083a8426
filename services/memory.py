"""What convoq indexes in Milvus: the records built from jobs and conversations.

Record ids are deterministic (``vectorstore.memory_id``): indexing the same
job or conversation step twice overwrites, never duplicates.
"""

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from services.conversations import ConversationJob
from vectorstore import MemoryKind, MemoryRecord, memory_id


def embed_record_id(tenant_id: str, job_id: str, position: int) -> str:
    """The record of an embed job's ``position``-th text."""
    return memory_id(tenant_id, f"job:{job_id}", position)


def message_record_id(tenant_id: str, conversation_id: str, seq: int) -> str:
    """The record of a conversation's message ``seq`` (the caller's conversation id)."""
    return memory_id(tenant_id, f"conversation:{conversation_id}:message", seq)


def summary_record_id(tenant_id: str, conversation_id: str) -> str:
    """The record of a conversation's summary: one per conversation, the latest."""
    return memory_id(tenant_id, f"conversation:{conversation_id}:summary", 0)


def embed_job_records(job: Row, vectors: Sequence[Sequence[float]]) -> list[MemoryRecord]:
    """One ``text`` record per text of an embed job that asked for ``store``."""
    params: dict[str, Any] = job.params
    return [
        MemoryRecord(
            id=record_id,
            tenant=str(job.tenant_id),
            user_id=params.get("user_id"),
            conversation_id=params.get("conversation_id"),
            kind=MemoryKind.TEXT,
            text=text,
            vector=vector,
            metadata=params.get("metadata") or {},
        )
        for record_id, text, vector in zip(
            embed_job_record_ids(job.tenant_id, job.id, len(params["texts"])),
            params["texts"],
            vectors,
            strict=True,
        )
    ]


def conversation_records(
    job: ConversationJob,
    messages: Sequence[str],
    summary: dict[str, Any] | None,
    vectors: Sequence[Sequence[float]],
) -> list[MemoryRecord]:
    """A ``message`` record per new message and one ``summary`` record per conversation.

    ``vectors`` holds one vector per message, then the summary's when it was
    embedded. The summary's id depends only on the conversation, so a new
    summary replaces the last one in the index.
    """
    common = {
        "tenant": str(job.tenant_id),
        "user_id": job.user_id,
        "conversation_id": job.conversation_id,
    }
    records = [
        MemoryRecord(
            id=message_record_id(str(job.tenant_id), job.conversation_id, seq),
            kind=MemoryKind.MESSAGE,
            text=text,
            vector=vector,
            **common,
        )
        for seq, text, vector in zip(
            range(job.first_seq, job.last_seq + 1), messages, vectors, strict=False
        )
    ]
    if summary is not None and summary["text"] and len(vectors) > len(messages):
        records.append(
            MemoryRecord(
                id=summary_record_id(str(job.tenant_id), job.conversation_id),
                kind=MemoryKind.SUMMARY,
                text=summary["text"],
                vector=vectors[len(messages)],
                **common,
            )
        )
    return records


def embed_job_record_ids(tenant_id: uuid.UUID, job_id: uuid.UUID, texts: int) -> list[str]:
    """The ids of the records an embed job with ``store`` indexes, one per text."""
    return [embed_record_id(str(tenant_id), str(job_id), position) for position in range(texts)]
