"""message job ids and last conversation job

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:56:54.475114
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("last_job_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_conversations_last_job_id_jobs"),
        "conversations",
        "jobs",
        ["last_job_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.add_column("messages", sa.Column("job_id", sa.Uuid(), nullable=True))
    op.create_index("ix_messages_job_id", "messages", ["job_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_messages_job_id_jobs"), "messages", "jobs", ["job_id"], ["id"], ondelete="SET NULL"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_messages_job_id_jobs"), "messages", type_="foreignkey")
    op.drop_index("ix_messages_job_id", table_name="messages")
    op.drop_column("messages", "job_id")
    op.drop_constraint(
        op.f("fk_conversations_last_job_id_jobs"), "conversations", type_="foreignkey"
    )
    op.drop_column("conversations", "last_job_id")
