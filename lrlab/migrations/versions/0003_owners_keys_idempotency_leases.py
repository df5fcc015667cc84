"""owners, keys, idempotency, leases, checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lrlab.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", lrlab.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_key_key_hash")),
    )
    op.create_table(
        "idempotency_record",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("location", sa.String(length=300), nullable=True),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_record")),
        sa.UniqueConstraint("owner", "key", name=op.f("uq_idempotency_record_owner")),
    )
    with op.batch_alter_table("idempotency_record", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idempotency_record_created_at"), ["created_at"], unique=False)

    op.create_table(
        "checkpoint",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", lrlab.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_checkpoint_run_id_run"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_checkpoint")),
    )
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        # existing rows were made before keys: they belong to the local owner
        batch_op.add_column(sa.Column("owner", sa.String(length=36), nullable=False, server_default="local"))
        batch_op.create_index(batch_op.f("ix_experiment_owner"), ["owner"], unique=False)

    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        # existing rows were made before keys: they belong to the local owner
        batch_op.add_column(sa.Column("owner", sa.String(length=36), nullable=False, server_default="local"))
        batch_op.create_index(batch_op.f("ix_lr_finder_owner"), ["owner"], unique=False)

    with op.batch_alter_table("run", schema=None) as batch_op:
        # existing rows were made before keys: they belong to the local owner
        batch_op.add_column(sa.Column("owner", sa.String(length=36), nullable=False, server_default="local"))
        batch_op.add_column(sa.Column("dispatched_at", lrlab.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("lease_token", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", lrlab.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_lease_expires_at"), ["lease_expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_owner"))
        batch_op.drop_index(batch_op.f("ix_run_lease_expires_at"))
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_token")
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("owner")

    with op.batch_alter_table("lr_finder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lr_finder_owner"))
        batch_op.drop_column("owner")

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_owner"))
        batch_op.drop_column("owner")

    op.drop_table("checkpoint")
    with op.batch_alter_table("idempotency_record", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_record_created_at"))

    op.drop_table("idempotency_record")
    op.drop_table("api_key")
