"""tenant policies

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:50:19.875422
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("max_cpus", sa.Float(), nullable=True),
        sa.Column("max_gpus", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tenants")),
    )


def downgrade() -> None:
    op.drop_table("tenants")
