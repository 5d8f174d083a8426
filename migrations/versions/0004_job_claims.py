"""jobs record the worker incarnation that holds them and when it claimed them

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("worker", sa.String(length=255), nullable=True))
    op.add_column(
        "jobs",
        sa.Column(
            "claimed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_index(
        "ix_jobs_active_claimed",
        "jobs",
        ["claimed_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_jobs_running_worker",
        "jobs",
        ["worker"],
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_running_worker", table_name="jobs")
    op.drop_index("ix_jobs_active_claimed", table_name="jobs")
    op.drop_column("jobs", "claimed_at")
    op.drop_column("jobs", "worker")
