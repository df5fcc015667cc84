"""fused packs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("execution", sa.String(length=16), nullable=False, server_default="separate"))

    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pack_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_pack_id"), ["pack_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_pack_id"))
        batch_op.drop_column("pack_id")

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("execution")
