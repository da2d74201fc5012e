"""The first policies: hard fit, pinning, and first-fit order."""

from __future__ import annotations

from computenet.model import Capacity
from computenet.model.common import format_bytes
from computenet.node.sched.framework import JobView, PoolView, Profile


class Pinned:
    name = "pinned"

    def filter(self, job: JobView, pool: PoolView) -> str | None:
        if job.pool and job.pool != pool.cpi:
            return f"the job is pinned to {job.pool}"
        return None


class FitsNow:
    """Free resources right now; a job that fits only later waits in the queue."""

    name = "fits"

    def filter(self, job: JobView, pool: PoolView) -> str | None:
        return shortfall(job.request, pool.free, "free")


class FirstFit:
    """Prefers the pool registered first, so placement is predictable when nothing else differs."""

    name = "first-fit"

    def score(self, job: JobView, pool: PoolView) -> float:
        return 100.0 / (1 + pool.order)


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


def default_profile() -> Profile:
    return Profile(filters=[Pinned(), FitsNow()], scores=[(FirstFit(), 1.0)])
