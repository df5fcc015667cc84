"""experiments and lr finder jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiment",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment")),
    )
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiment_created_at"), ["created_at"], unique=False)

    op.create_table(
        "lr_finder",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lr_finder")),
    )
    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lr_finder_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_lr_finder_status"), ["status"], unique=False)

    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_run_experiment_id_experiment"), "experiment", ["experiment_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_run_experiment_id_experiment"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_run_experiment_id"))
        batch_op.drop_column("params")
        batch_op.drop_column("experiment_id")

    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lr_finder_status"))
        batch_op.drop_index(batch_op.f("ix_lr_finder_created_at"))

    op.drop_table("lr_finder")
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_created_at"))

    op.drop_table("experiment")
