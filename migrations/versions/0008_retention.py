"""retention: tenants.retention_days, and the indexes the purge reads by

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("retention_days", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_tenants_retention_days_non_negative"), "tenants", "retention_days >= 0"
    )
    op.create_index("ix_conversations_tenant_created", "conversations", ["tenant_id", "created_at"])
    op.create_index("ix_conversations_last_job_id", "conversations", ["last_job_id"])


def downgrade() -> None:
    op.drop_index("ix_conversations_last_job_id", table_name="conversations")
    op.drop_index("ix_conversations_tenant_created", table_name="conversations")
    op.drop_constraint(op.f("ck_tenants_retention_days_non_negative"), "tenants", type_="check")
    op.drop_column("tenants", "retention_days")
