"""vectors stored as float32 bytes; summaries record chunks and backend

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 20:30:00
"""

import sys
from array import array
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("vectors", sa.LargeBinary(), nullable=True))
    op.add_column("summaries", sa.Column("chunks", sa.Integer(), nullable=True))
    op.add_column("summaries", sa.Column("backend", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Before 0003 an embed job kept its vectors in its JSON result: put them back there.
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Uuid()),
        sa.column("type", sa.String()),
        sa.column("result", sa.dialects.postgresql.JSONB()),
        sa.column("vectors", sa.LargeBinary()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(jobs.c.id, jobs.c.result, jobs.c.vectors).where(
            jobs.c.type == "embed", jobs.c.vectors.is_not(None), jobs.c.result.is_not(None)
        )
    )
    for job_id, result, raw in rows.all():
        floats = array("f", raw)
        if sys.byteorder == "big":
            floats.byteswap()
        dimensions = result.get("dimensions") or 384
        values = floats.tolist()
        result["vectors"] = [values[i : i + dimensions] for i in range(0, len(values), dimensions)]
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(result=result))
    op.drop_column("summaries", "backend")
    op.drop_column("summaries", "chunks")
    op.drop_column("jobs", "vectors")
