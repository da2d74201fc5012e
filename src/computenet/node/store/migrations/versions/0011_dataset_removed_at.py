"""dataset versions keep their row when removed

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 13:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("removed_at", sa.Float(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM datasets WHERE removed_at IS NOT NULL")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("removed_at")
