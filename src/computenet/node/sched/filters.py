"""Hard requirements: a pool that fails one is not a candidate at all."""

from __future__ import annotations

from computenet.model import Capacity
from computenet.model.common import format_bytes
from computenet.model.dataset import split_input
from computenet.model.job import runtime_of
from computenet.node.sched.framework import Context, JobView, PoolView


class Pinned:
    name = "pinned"

    def filter(self, job: JobView, pool: PoolView, ctx: Context) -> str | None:
        if job.pool and job.pool != pool.cpi:
            return f"the job is pinned to {job.pool}"
        return None


class Regions:
    """Data residency and placement policy: only the regions the job allows."""

    name = "regions"

    def filter(self, job: JobView, pool: PoolView, ctx: Context) -> str | None:
        if job.regions and pool.region not in job.regions:
            return f"region {pool.region or '(none)'} is not one of {', '.join(job.regions)}"
        return None


class Devices:
    """``--accelerator``, ``--vendor`` and ``--arch``: enough devices of the kinds asked
    for, on a machine of an allowed architecture."""

    name = "devices"

    def filter(self, job: JobView, pool: PoolView, ctx: Context) -> str | None:
        if job.archs and not pool.archs & set(job.archs):
            have = ", ".join(sorted(pool.archs)) or "unknown"
            return f"CPU architecture {have} is not one of {', '.join(job.archs)}"
        if job.variants:
            runtimes = runtime_of()
            offered = {"cpu"} | {runtimes.get(e, "") for _, e, _ in pool.devices} - {""}
            if not offered & job.variants:
                return (
                    f"offers the runtimes {', '.join(sorted(offered))}; the job has variants "
                    f"for {', '.join(sorted(job.variants))}"
                )
        if job.request.gpus and (job.accel is not None or job.vendors or job.variants):
            n = max((len(g) for g in job.usable_groups(pool)), default=0)
            if n < job.request.gpus:
                what = job.accelerator or "/".join(job.vendors) or "/".join(sorted(job.variants))
                one = " of one runtime" if job.variants else ""
                return f"has {n} {what} device(s){one}, needs {job.request.gpus}"
        return None


class Capacious:
    """Big enough when empty. Whether it is free *now* is a score (start time), not a filter,
    so that a job can choose to wait for a better pool."""

    name = "capacity"

    def filter(self, job: JobView, pool: PoolView, ctx: Context) -> str | None:
        return shortfall(job.request, pool.capacity, "the pool has")


class DataReachable:
    """Each input is at the pool, or at a pool it can be fetched from now. Where every copy
    is on a pool that is not online (its agent stopped, say), the job waits for one to
    come back, its reason naming the data, rather than be placed and fail at staging."""

    name = "data"

    def filter(self, job: JobView, pool: PoolView, ctx: Context) -> str | None:
        if ctx.online is None:
            return None
        for uri in dict.fromkeys(split_input(u)[0] for u in job.inputs):
            known = ctx.data(uri)
            if known is None or pool.cpi in known[1] or known[1] & ctx.online:
                continue
            if not ctx.copies(uri):  # none recorded here: another node's pool, or none left
                continue
            return f"no online pool holds {uri}: waiting for one that does"
        return None


def shortfall(request: Capacity, have: Capacity, what: str) -> str | None:
    if request.cpus > have.cpus + 1e-9:
        return f"needs {request.cpus:g} CPUs, {what} {have.cpus:g}"
    if request.memory_bytes > have.memory_bytes:
        return (
            f"needs {format_bytes(request.memory_bytes)} memory, "
            f"{what} {format_bytes(have.memory_bytes)}"
        )
    if request.gpus > have.gpus:
        return f"needs {request.gpus} GPUs, {what} {have.gpus}"
    return None
