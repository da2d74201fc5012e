"""Network distance: latency from this node's region to the pool's, from configuration."""

from __future__ import annotations

from computenet.node.sched.framework import Context, JobView, PoolView


class NetworkDistance:
    name = "network"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        return ctx.latency_ms(pool.region)
