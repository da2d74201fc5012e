"""pool change time and calibration requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 03:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.add_column(sa.Column("changed_at", sa.Float(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("calibrate_requested_at", sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f("ix_pools_changed_at"), ["changed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pools_changed_at"))
        batch_op.drop_column("calibrate_requested_at")
        batch_op.drop_column("changed_at")
