"""Conversations, their messages and their summaries."""

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, created_at_column
from models.encryption import EncryptedText


class Conversation(Base):
    """``external_id`` is the caller's conversation id, unique within a tenant."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        Index("ix_conversations_tenant_user", "tenant_id", "user_id"),
        # Retention (services/retention.py): a tenant's conversations old enough to
        # hold expired rows; and the conversations a deleted job was the last one of
        # (the foreign key's SET NULL looks them up for every job row deleted).
        Index("ix_conversations_tenant_created", "tenant_id", "created_at"),
        Index("ix_conversations_last_job_id", "last_job_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = created_at_column()
    # The job that last posted messages here: its status is the processing status.
    last_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL")
    )

    messages: Mapped[list["Message"]] = relationship(
        back_populates="conversation", order_by="Message.seq"
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        Index("ix_messages_job_id", "job_id"),
        # A message the client gave an id is stored once per conversation.
        Index(
            "uq_messages_conversation_client_id",
            "conversation_id",
            "client_id",
            unique=True,
            postgresql_where=text("client_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int]
    role: Mapped[str] = mapped_column(String(16))
    # Encrypted at rest: reads and writes through this column see the plaintext.
    content: Mapped[str] = mapped_column(EncryptedText("messages.content"))
    # The job that posted the message: a redelivered job finds its messages
    # already stored instead of appending them twice.
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # The message's ``id`` as the client sent it: a retried post stores it once.
    client_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_at_column()

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Summary(Base):
    """A summary of a conversation's messages up to and including ``upto_seq``."""

    __tablename__ = "summaries"
    __table_args__ = (UniqueConstraint("conversation_id", "upto_seq"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    upto_seq: Mapped[int]
    text: Mapped[str] = mapped_column(EncryptedText("summaries.text"))
    method: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(255))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    chunks: Mapped[int | None]
    backend: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = created_at_column()
