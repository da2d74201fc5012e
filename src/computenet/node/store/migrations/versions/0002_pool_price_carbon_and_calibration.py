"""pool price carbon and calibration

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 23:39:47.010562
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.add_column(sa.Column("price", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("carbon_intensity", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("scu", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("calibration", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.drop_column("calibration")
        batch_op.drop_column("scu")
        batch_op.drop_column("carbon_intensity")
        batch_op.drop_column("price")
