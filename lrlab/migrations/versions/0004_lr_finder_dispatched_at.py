"""lr_finder dispatched_at (the outbox, as for runs)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatched_at", lrlab.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        batch_op.drop_column("dispatched_at")
