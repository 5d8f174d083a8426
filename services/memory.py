"""What convoq indexes in Milvus: the records built from jobs and conversations.

Record ids are deterministic (``vectorstore.memory_id``): indexing the same
job or conversation step twice overwrites, never duplicates.
"""

from collections.abc import Sequence
from typing import Any

from models import Job
from services.conversations import PipelineState
from vectorstore import MemoryKind, MemoryRecord, memory_id


def embed_job_records(
    job: Job, texts: Sequence[str], vectors: Sequence[Sequence[float]]
) -> list[MemoryRecord]:
    """One ``text`` record per text of an embed job that asked for ``store``."""
    params: dict[str, Any] = job.params
    return [
        MemoryRecord(
            id=memory_id(str(job.tenant_id), f"job:{job.id}", position),
            tenant=str(job.tenant_id),
            user_id=params.get("user_id"),
            conversation_id=params.get("conversation_id"),
            kind=MemoryKind.TEXT,
            text=text,
            vector=vector,
            metadata=params.get("metadata") or {},
        )
        for position, (text, vector) in enumerate(zip(texts, vectors, strict=True))
    ]


def conversation_records(state: PipelineState, messages: Sequence[str]) -> list[MemoryRecord]:
    """A ``message`` record per new message and one ``summary`` record per conversation.

    The summary's id depends only on the conversation, so a new summary
    replaces the last one in the index.
    """
    assert state.vectors is not None
    source = f"conversation:{state.conversation_id}"
    common = {
        "tenant": str(state.tenant_id),
        "user_id": state.user_id,
        "conversation_id": state.conversation_id,
    }
    records = [
        MemoryRecord(
            id=memory_id(str(state.tenant_id), f"{source}:message", seq),
            kind=MemoryKind.MESSAGE,
            text=text,
            vector=vector,
            **common,
        )
        for seq, text, vector in zip(
            range(state.first_seq, state.last_seq + 1), messages, state.vectors, strict=False
        )
    ]
    if state.summary is not None and state.summary["text"] and len(state.vectors) > len(messages):
        records.append(
            MemoryRecord(
                id=memory_id(str(state.tenant_id), f"{source}:summary", 0),
                kind=MemoryKind.SUMMARY,
                text=state.summary["text"],
                vector=state.vectors[len(messages)],
                **common,
            )
        )
    return records
