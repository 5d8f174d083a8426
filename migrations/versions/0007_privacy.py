"""privacy: tenants.redact_pii

Message and summary text is encrypted by the application (models/encryption.py)
in the same text columns: rows written before stay readable as they are, and
``flask --app api reencrypt`` encrypts them. No schema change is needed for it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("redact_pii", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("tenants", "redact_pii")
