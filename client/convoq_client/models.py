"""What the API answers, as pydantic models. Unknown fields are kept (``extra="allow"``),
so a newer server never breaks an older client."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)


class Progress(_Model):
    done: int
    total: int


class JobError(_Model):
    code: str
    message: str


class Job(_Model):
    """A job. ``result`` is ``None`` until it has succeeded; an embed job's
    ``result["vectors"]`` is a float32 numpy array when numpy is installed, lists otherwise."""

    id: str
    type: str
    status: str
    progress: Progress
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    result: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """It has ended: succeeded, failed or canceled."""
        return self.status in TERMINAL

    @property
    def vectors(self) -> Any:
        """An embed job's vectors, once it has succeeded."""
        return (self.result or {}).get("vectors")


class JobPage(_Model):
    jobs: list[Job]
    next_cursor: str | None = None


class SearchHit(_Model):
    id: str
    score: float
    kind: str
    user_id: str | None = None
    conversation_id: str | None = None
    text: str


class Message(_Model):
    seq: int
    role: str
    content: str
    created_at: datetime


class Summary(_Model):
    text: str
    upto_seq: int
    method: str
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    created_at: datetime


class Conversation(_Model):
    conversation_id: str
    user_id: str | None = None
    created_at: datetime
    updated_at: datetime
    status: str
    messages: list[Message]
    next_after_seq: int | None = None
    summary: Summary | None = None


class Erasure(_Model):
    """An erasure of a user or a conversation; ``removed`` counts what each store gave up."""

    id: str
    target: Literal["user", "conversation"]
    target_id: str
    status: Literal["pending", "running", "succeeded", "failed"]
    attempts: int
    removed: dict[str, dict[str, int]]
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Embedding(_Model):
    index: int
    embedding: Any  # numpy array or list of floats


class Usage(_Model):
    prompt_tokens: int
    total_tokens: int


class Embeddings(_Model):
    """``POST /v1/embeddings``' answer, OpenAI's shape; ``vectors`` stacks them."""

    data: list[Embedding]
    model: str
    usage: Usage

    @property
    def vectors(self) -> Any:
        rows = [item.embedding for item in sorted(self.data, key=lambda item: item.index)]
        try:
            import numpy as np
        except ImportError:
            return rows
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


class Queue(_Model):
    waiting: int
    unacked: int
    depth: int
    workers: int
    recommended_replicas: int


class AuditEntry(_Model):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]


class AuditPage(_Model):
    entries: list[AuditEntry]
    next_cursor: str | None = None
