"""The ``erasures`` table: requests to forget a user or a conversation, and how they went.

An erasure outlives what it erased: its row says who asked (the key's prefix),
what was asked for and how many rows and vectors each store gave up, never
the erased text.
"""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, Uuid, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at_column


class ErasureStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ErasureTarget(StrEnum):
    USER = "user"
    CONVERSATION = "conversation"


UNFINISHED_ERASURE_STATUSES = (ErasureStatus.PENDING, ErasureStatus.RUNNING)
# The partial indexes' predicate, and what ON CONFLICT names to use the unique one.
UNFINISHED_PREDICATE = text("status IN ('pending', 'running')")


class Erasure(Base):
    __tablename__ = "erasures"
    __table_args__ = (
        # One unfinished erasure per target: a second request while it is
        # underway gets the same erasure back.
        Index(
            "uq_erasures_unfinished_target",
            "tenant_id",
            "target_type",
            "target_id",
            unique=True,
            postgresql_where=UNFINISHED_PREDICATE,
        ),
        # The re-send sweep (services.erasure.stalled_erasures).
        Index(
            "ix_erasures_unfinished_claimed",
            "claimed_at",
            postgresql_where=UNFINISHED_PREDICATE,
        ),
        CheckConstraint("status IN ('pending', 'running', 'succeeded', 'failed')", name="status"),
        CheckConstraint("target_type IN ('user', 'conversation')", name="target_type"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    target_type: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=ErasureStatus.PENDING.value)
    # The prefix of the API key that asked.
    actor: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(default=0)
    # Rows and vectors removed so far, by store: {"postgresql": {"messages": 3, ..}, ..}.
    removed: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # While underway: the user's conversations found in PostgreSQL (their vectors
    # are deleted after the rows are gone), and the jobs that had started when
    # they were canceled (their workers may still be writing). Cleared at the end.
    conversation_ids: Mapped[list[str]] = mapped_column(
        ARRAY(String(255)), server_default=text("'{}'")
    )
    waiting_on: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), server_default=text("'{}'"))
    # The last error met (a type and message, never erased text).
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # When a worker last took it up or the sweep last sent it: a request whose
    # message was lost is sent again once this is old (services.erasure).
    claimed_at: Mapped[datetime] = created_at_column()
