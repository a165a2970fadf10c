"""jobs: step_at (watchdog), time_limit_s (per-job limit), input_bytes (tenant storage)

Revision ID: 0002_ops
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_ops"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("step_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("time_limit_s", sa.Float, nullable=True))
        batch.add_column(sa.Column("input_bytes", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("input_bytes")
        batch.drop_column("time_limit_s")
        batch.drop_column("step_at")
