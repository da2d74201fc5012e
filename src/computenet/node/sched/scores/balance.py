"""Load balance: prefer the pool that is least used after taking the job."""

from __future__ import annotations

from computenet.node.sched.framework import Context, JobView, PoolView


class Balance:
    name = "balance"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        cap, free, req = pool.capacity, pool.free, job.request
        shares = [(cap.cpus - free.cpus + req.cpus) / cap.cpus] if cap.cpus else []
        if cap.gpus:
            shares.append((cap.gpus - free.gpus + req.gpus) / cap.gpus)
        if cap.memory_bytes and req.memory_bytes:
            shares.append(
                (cap.memory_bytes - free.memory_bytes + req.memory_bytes) / cap.memory_bytes
            )
        return max(shares) if shares else None
