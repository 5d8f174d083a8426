"""The ``jobs`` table: PostgreSQL is the source of truth for job state."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at_column
from models.encryption import EncryptedJSON


class JobType(StrEnum):
    EMBED = "embed"
    SUMMARIZE = "summarize"
    CONVERSATION = "conversation"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class JobErrorCode(StrEnum):
    """``error.code`` of a failed job: what went wrong, for people and for programs."""

    INTERNAL_ERROR = "internal_error"
    TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    BROKER_UNAVAILABLE = "broker_unavailable"
    # PostgreSQL, Redis or Milvus stayed away for every retry (``RetrySettings``).
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def _string_enum(enum: type[StrEnum], name: str) -> Enum:
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Listing a tenant's jobs newest first, optionally by status or type.
        Index("ix_jobs_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_jobs_tenant_status_created",
            "tenant_id",
            "status",
            text("created_at DESC"),
            text("id DESC"),
        ),
        Index(
            "uq_jobs_tenant_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The recovery sweep (services/recovery.py): active jobs by when they were
        # last claimed, and the running ones by the worker that holds them.
        Index(
            "ix_jobs_active_claimed",
            "claimed_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        Index("ix_jobs_running_worker", "worker", postgresql_where=text("status = 'running'")),
        # Webhooks whose delivery stalled (services/webhooks.stalled_deliveries).
        Index(
            "ix_jobs_webhook_undelivered",
            "finished_at",
            postgresql_where=text(
                "callback_url IS NOT NULL "
                "AND (webhook_status IS NULL OR webhook_status = 'retrying')"
            ),
        ),
        CheckConstraint("progress_done >= 0 AND progress_total >= 0", name="progress_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[JobType] = mapped_column(_string_enum(JobType, "job_type"))
    status: Mapped[JobStatus] = mapped_column(
        _string_enum(JobStatus, "job_status"), default=JobStatus.QUEUED
    )
    # The texts a job was given, and the summary it made, are encrypted at rest.
    params: Mapped[dict[str, Any]] = mapped_column(
        EncryptedJSON("jobs.params", ("texts", "text", "messages", "metadata"))
    )
    result: Mapped[dict[str, Any] | None] = mapped_column(
        EncryptedJSON("jobs.result", ("text", "summary"))
    )
    # Vectors the job made, float32 little-endian, one row after the other:
    # an embed job's result, or a conversation job's until its store step.
    vectors: Mapped[bytes | None] = mapped_column(LargeBinary)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress_done: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Where the job's final state is POSTed (services.webhooks), and how that went:
    # pending, retrying, delivered or failed, with one entry per attempt.
    callback_url: Mapped[str | None] = mapped_column(Text)
    webhook_status: Mapped[str | None] = mapped_column(String(16))
    webhook_attempts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # The worker incarnation that last started or resumed the job
    # (``worker.presence.worker_identity``); None while no worker holds it.
    worker: Mapped[str | None] = mapped_column(String(255))
    # When a worker last claimed it, or the recovery sweep last saw it queued
    # or published it again; its submission until then.
    claimed_at: Mapped[datetime] = mapped_column(server_default=func.now())
