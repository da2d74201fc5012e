"""labels as the node takes them now

Keys are 1 to 256 characters with no control or format character, values at most 4,096
characters. A job or pool stored before that rule is read back through it, so each one
that breaks it is brought within it here: such characters become U+FFFD, long keys and
values are cut, and an empty key is dropped.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 10:00:00.000000
"""

from __future__ import annotations

import unicodedata
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _taken(labels: Any) -> dict[str, str] | None:
    """``labels`` within the rule; None where they are already."""
    if not isinstance(labels, dict):
        return None
    out: dict[str, str] = {}
    for k, v in labels.items():
        key = "".join(
            "\ufffd" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in str(k)
        )[:256]
        if key and key not in out:
            out[key] = str(v)[:4096]
    return None if out == labels else out


def upgrade() -> None:
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    for row in conn.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        spec = row.spec if isinstance(row.spec, dict) else {}
        fixed = _taken(spec.get("labels"))
        if fixed is not None:
            spec = {**spec, "labels": fixed}
            conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(spec=spec))
    pools = sa.table("pools", sa.column("cpi", sa.String), sa.column("labels", sa.JSON))
    for row in conn.execute(sa.select(pools.c.cpi, pools.c.labels)).all():
        fixed = _taken(row.labels)
        if fixed is not None:
            conn.execute(sa.update(pools).where(pools.c.cpi == row.cpi).values(labels=fixed))


def downgrade() -> None:
    pass  # what was cut is not kept
