"""Carbon: the grid intensity where the pool runs (gCO2e/kWh), as its provider states it."""

from __future__ import annotations

from computenet.node.sched.framework import Context, JobView, PoolView


class Carbon:
    name = "carbon"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        return pool.carbon
