"""population based training

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

Populations (pbt), their members' places (pbt_member) and lineage (pbt_event); runs name their population.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pbt",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("execution", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("boundary", sa.Integer(), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pbt")),
    )
    op.create_index(op.f("ix_pbt_created_at"), "pbt", ["created_at"], unique=False)
    op.create_index(op.f("ix_pbt_owner"), "pbt", ["owner"], unique=False)
    op.create_index(op.f("ix_pbt_status"), "pbt", ["status"], unique=False)
    op.create_table(
        "pbt_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pbt_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("source", sa.Integer(), nullable=False),
        sa.Column("old", sa.JSON(), nullable=False),
        sa.Column("new", sa.JSON(), nullable=False),
        sa.Column("resampled", sa.JSON(), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pbt_id"], ["pbt.id"], name=op.f("fk_pbt_event_pbt_id_pbt"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pbt_event")),
        sa.UniqueConstraint("pbt_id", "epoch", "target", name=op.f("uq_pbt_event_pbt_id")),
    )
    op.create_index(op.f("ix_pbt_event_pbt_id"), "pbt_event", ["pbt_id"], unique=False)
    op.create_table(
        "pbt_member",
        sa.Column("pbt_id", sa.String(length=36), nullable=False),
        sa.Column("member", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("weights_from", sa.Integer(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["pbt_id"], ["pbt.id"], name=op.f("fk_pbt_member_pbt_id_pbt"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_pbt_member_run_id_run"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pbt_id", "member", name=op.f("pk_pbt_member")),
        sa.UniqueConstraint("run_id", name=op.f("uq_pbt_member_run_id")),
    )
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pbt_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_pbt_id"), ["pbt_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_run_pbt_id_pbt"), "pbt", ["pbt_id"], ["id"], ondelete="CASCADE")


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_run_pbt_id_pbt"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_run_pbt_id"))
        batch_op.drop_column("pbt_id")
    op.drop_table("pbt_member")
    op.drop_index(op.f("ix_pbt_event_pbt_id"), table_name="pbt_event")
    op.drop_table("pbt_event")
    op.drop_index(op.f("ix_pbt_status"), table_name="pbt")
    op.drop_index(op.f("ix_pbt_owner"), table_name="pbt")
    op.drop_index(op.f("ix_pbt_created_at"), table_name="pbt")
    op.drop_table("pbt")
