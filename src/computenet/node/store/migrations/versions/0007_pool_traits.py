"""pool traits and runtime

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 03:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traits", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("runtime", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.drop_column("runtime")
        batch_op.drop_column("traits")
