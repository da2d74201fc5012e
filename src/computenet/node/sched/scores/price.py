"""Cost: what the job would pay on the pool for its request and time limit."""

from __future__ import annotations

from computenet.node.sched.framework import Context, JobView, PoolView


class Price:
    name = "price"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        if pool.price is None:
            return None
        r = job.request
        return pool.price.per_hour(r.cpus, r.gpus, r.memory_bytes) * job.hours
