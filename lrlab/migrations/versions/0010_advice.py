"""advice: the answer to "which optimizer, which lr?" as a state machine over range tests and experiments

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

An advice row per request; its range tests (lr_finder) and its experiments (the search, the replicates) name it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "advice",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advice")),
    )
    op.create_index(op.f("ix_advice_created_at"), "advice", ["created_at"], unique=False)
    op.create_index(op.f("ix_advice_owner"), "advice", ["owner"], unique=False)
    op.create_index(op.f("ix_advice_status"), "advice", ["status"], unique=False)
    for table in ("experiment", "lr_finder"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("advice_id", sa.String(length=36), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_advice_id"), ["advice_id"], unique=False)
            batch_op.create_foreign_key(
                batch_op.f(f"fk_{table}_advice_id_advice"), "advice", ["advice_id"], ["id"], ondelete="CASCADE"
            )


def downgrade() -> None:
    for table in ("lr_finder", "experiment"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_advice_id_advice"), type_="foreignkey")
            batch_op.drop_index(batch_op.f(f"ix_{table}_advice_id"))
            batch_op.drop_column("advice_id")
    op.drop_index(op.f("ix_advice_status"), table_name="advice")
    op.drop_index(op.f("ix_advice_owner"), table_name="advice")
    op.drop_index(op.f("ix_advice_created_at"), table_name="advice")
    op.drop_table("advice")
