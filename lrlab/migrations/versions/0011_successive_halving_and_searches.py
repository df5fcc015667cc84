"""successive halving and searches

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

An experiment's early_stopping (ASHA) and each run's report at each rung; searches (an Optuna study each, in
this database) whose trials are runs (run.search_id, run.trial: one run per trial).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "search",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("study_name", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("dispatched_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search")),
    )
    with op.batch_alter_table("search", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_search_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_search_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_search_status"), ["status"], unique=False)

    op.create_table(
        "rung_report",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cohort", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("continued", sa.Boolean(), nullable=True),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_rung_report_run_id_run"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rung_report")),
        sa.UniqueConstraint("run_id", "rung", name=op.f("uq_rung_report_run_id")),
    )
    with op.batch_alter_table("rung_report", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rung_report_cohort"), ["cohort"], unique=False)

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("early_stopping", sa.JSON(), nullable=True))

    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("trial", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_search_id"), ["search_id"], unique=False)
        batch_op.create_unique_constraint(batch_op.f("uq_run_search_id"), ["search_id", "trial"])
        batch_op.create_foreign_key(
            batch_op.f("fk_run_search_id_search"), "search", ["search_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_run_search_id_search"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_run_search_id"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_run_search_id"))
        batch_op.drop_column("trial")
        batch_op.drop_column("search_id")

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("early_stopping")

    with op.batch_alter_table("rung_report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rung_report_cohort"))

    op.drop_table("rung_report")
    with op.batch_alter_table("search", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_status"))
        batch_op.drop_index(batch_op.f("ix_search_owner"))
        batch_op.drop_index(batch_op.f("ix_search_created_at"))

    op.drop_table("search")
