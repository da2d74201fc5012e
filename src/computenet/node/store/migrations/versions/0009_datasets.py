"""datasets and their replicas

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("tree_hash", sa.String(length=64), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_datasets")),
    )
    op.create_index("ix_datasets_name_created", "datasets", ["name", "created_at"], unique=False)
    op.create_table(
        "dataset_replicas",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("pool_cpi", sa.String(length=255), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["datasets.name", "datasets.version"],
            name=op.f("fk_dataset_replicas_name_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("name", "version", "pool_cpi", name=op.f("pk_dataset_replicas")),
    )


def downgrade() -> None:
    op.drop_table("dataset_replicas")
    op.drop_index("ix_datasets_name_created", table_name="datasets")
    op.drop_table("datasets")
