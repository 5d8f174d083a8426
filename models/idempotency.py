"""``Idempotency-Key``: what a key created, so a retry gets it back instead of a copy."""

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at_column


class IdempotencyKey(Base):
    """A key of a tenant and the jobs its request made (many for a batch), in order.

    ``fingerprint`` is the SHA-256 of the route and the parsed body: the same key
    with another body is refused. Past ``expires_at`` the key may be used again.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    job_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid))
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime]
