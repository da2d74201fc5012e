"""the links between pools, as measured by the copies that crossed them

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 16:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_links",
        sa.Column("source", sa.String(255), primary_key=True),
        sa.Column("destination", sa.String(255), primary_key=True),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pool_links")
