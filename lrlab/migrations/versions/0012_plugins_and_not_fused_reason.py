"""plugins a worker offers; why a run trained on its own

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

worker_heartbeat.plugins: the advertisement of the plugins a worker offers (models and datasets from installed
packages' entry points, and those it refused), NULL until it has listed them. run.not_fused_reason: why a run
whose grid asked to fuse it trained on its own (e.g. a plugin's model that cannot be stacked).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("worker_heartbeat", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plugins", sa.JSON(), nullable=True))
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_fused_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("not_fused_reason")
    with op.batch_alter_table("worker_heartbeat", schema=None) as batch_op:
        batch_op.drop_column("plugins")
