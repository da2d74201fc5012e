"""Estimated start: now where the job fits now, else when enough running work ends.

The estimate comes from the queue's real state: the running attempts' start times and
time limits (an attempt without a limit is assumed to run an hour).
"""

from __future__ import annotations

from computenet.node.sched.framework import Context, JobView, PoolView


class StartTime:
    name = "start_time"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        if pool.fits_now(job.request):
            return 0.0
        return ctx.start_estimate(pool, job.request)
