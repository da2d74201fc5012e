"""Data locality: bytes that would have to move to the pool before the job can start.

Jobs declare no data inputs yet, so every pool scores the same (zero bytes to move);
the transfer protocol fills this in from the datasets each pool holds.
"""

from __future__ import annotations

from computenet.node.sched.framework import Context, JobView, PoolView


class DataLocality:
    name = "locality"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        return 0.0
