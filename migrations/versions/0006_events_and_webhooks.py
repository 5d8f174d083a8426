"""webhooks: jobs.callback_url and their delivery attempts, tenants.webhook_secret

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("webhook_status", sa.String(length=16), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("webhook_attempts", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("tenants", sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_jobs_webhook_undelivered",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text(
            "callback_url IS NOT NULL AND (webhook_status IS NULL OR webhook_status = 'retrying')"
        ),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_webhook_undelivered", table_name="jobs")
    op.drop_column("tenants", "webhook_secret")
    op.drop_column("jobs", "webhook_attempts")
    op.drop_column("jobs", "webhook_status")
    op.drop_column("jobs", "callback_url")
