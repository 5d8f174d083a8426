"""Tenants and the hashed API keys that authenticate them."""

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, created_at_column


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint("retention_days >= 0", name="retention_days_non_negative"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = created_at_column()
    # Signs the tenant's webhooks (``whsec_`` + base64), made on first use.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))
    # PII (e-mail addresses, phone numbers, IBANs, card and AHV numbers) in the
    # tenant's texts is replaced by placeholders before it is stored or embedded.
    redact_pii: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Days its data is kept (services/retention.py). None: the deployment's
    # RETENTION_DAYS; 0: kept forever, whatever RETENTION_DAYS says.
    retention_days: Mapped[int | None]

    api_keys: Mapped[list["ApiKey"]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """A key is stored only as its SHA-256 digest; ``prefix`` identifies it to humans."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = created_at_column()
    revoked_at: Mapped[datetime | None]

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")
