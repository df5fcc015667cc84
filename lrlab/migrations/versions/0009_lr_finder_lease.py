"""lr_finder attempts and lease (as for runs: a poison job ends failed after MAX_ATTEMPTS claims)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        # jobs count their claims from here on; one running now holds no lease (see leases._reconcile_lr_finders)
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("lease_token", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", lrlab.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_lr_finder_lease_expires_at"), ["lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lr_finder_lease_expires_at"))
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_token")
        batch_op.drop_column("attempts")
