"""jobs: waiting_reason (why a queued job is not taken, e.g. no live worker serves its queue)

Revision ID: 0003_ops
Revises: 0002_ops
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_ops"
down_revision = "0002_ops"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("waiting_reason", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("waiting_reason")
