"""SQLAlchemy 2.0 ORM models. Migrations live in ``migrations/``."""

from models.audit import AuditLog
from models.base import Base
from models.conversation import Conversation, Message, Summary
from models.erasure import (
    UNFINISHED_ERASURE_STATUSES,
    UNFINISHED_PREDICATE,
    Erasure,
    ErasureStatus,
    ErasureTarget,
)
from models.idempotency import IdempotencyKey
from models.job import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    Job,
    JobErrorCode,
    JobStatus,
    JobType,
)
from models.tenant import ApiKey, Tenant

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "UNFINISHED_ERASURE_STATUSES",
    "UNFINISHED_PREDICATE",
    "ApiKey",
    "AuditLog",
    "Base",
    "Conversation",
    "Erasure",
    "ErasureStatus",
    "ErasureTarget",
    "IdempotencyKey",
    "Job",
    "JobErrorCode",
    "JobStatus",
    "JobType",
    "Message",
    "Summary",
    "Tenant",
]
