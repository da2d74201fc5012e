"""Reserve and bind: the one step that turns a ranking into a placement, atomically.

The reservation is a conditional UPDATE on the pool's allocation (it succeeds only if the
resources are still free) and the bind a conditional UPDATE on the job (only if it is still
QUEUED), in one transaction. Several node replicas on one PostgreSQL can therefore run
passes at the same time: the loser of a race sees zero rows and moves on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from computenet.model import Capacity, JobState, PoolStatus
from computenet.node.metrics import PLACED, SCHEDULE_PASS
from computenet.node.sched.framework import JobView, PoolView, Profile
from computenet.node.sched.plugins import shortfall
from computenet.node.store.tables import attempts, jobs, pools

PAGE = 64
MAX_SCAN = 10_000  # a pass looks this deep for a job that fits (backfill)


@dataclass
class PassResult:
    placed: dict[str, str] = field(default_factory=dict)  # job id -> pool CPI
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why
    scanned: int = 0

    @property
    def pools(self) -> set[str]:
        return set(self.placed.values())


def load_pools(conn: Connection) -> list[PoolView]:
    found = conn.execute(
        select(pools)
        .where(pools.c.status == PoolStatus.online.value)
        .order_by(pools.c.registered_at)
    ).all()
    out = []
    for i, r in enumerate(found):
        cap = Capacity(cpus=r.cap_cpus, memory_bytes=r.cap_memory, gpus=r.cap_gpus)
        alloc = Capacity(
            cpus=max(0.0, r.alloc_cpus),
            memory_bytes=max(0, r.alloc_memory),
            gpus=max(0, r.alloc_gpus),
        )
        out.append(PoolView(r.cpi, r.region, r.labels, cap, cap.minus(alloc), i))
    return out


def schedule_pass(conn: Connection, profile: Profile) -> PassResult:
    with SCHEDULE_PASS.time():
        result = _pass(conn, profile)
    PLACED.inc(len(result.placed))
    return result


def _pass(conn: Connection, profile: Profile) -> PassResult:
    result = PassResult()
    views = load_pools(conn)
    if not views:
        return result
    now = time.time()
    after: tuple[int, str] | None = None
    while any(v.free.cpus > 0 for v in views):
        page = _queued_page(conn, after)
        for row in page:
            if not any(v.free.cpus > 0 for v in views):
                break
            job = JobView(
                row.id,
                row.tenant,
                Capacity(cpus=row.req_cpus, memory_bytes=row.req_memory, gpus=row.req_gpus),
                row.pin_pool,
                row.priority,
                row.created_at,
            )
            ranking = profile.rank(job, views)
            for view, _score, _parts in ranking.ranked:
                if _bind(conn, job, view, now):
                    view.free = view.free.minus(job.request)
                    result.placed[job.id] = view.cpi
                    break
            else:
                result.waiting[job.id] = "; ".join(
                    f"{cpi}: {why}" for cpi, why in list(ranking.rejected.items())[:3]
                )
        if len(page) < PAGE or result.scanned + len(page) >= MAX_SCAN:
            break
        result.scanned += len(page)
        after = (page[-1].priority, page[-1].id)
    return result


_QUEUED = select(
    jobs.c.id,
    jobs.c.tenant,
    jobs.c.req_cpus,
    jobs.c.req_memory,
    jobs.c.req_gpus,
    jobs.c.pin_pool,
    jobs.c.priority,
    jobs.c.created_at,
).where(jobs.c.state == JobState.QUEUED.value)
_FIRST_PAGE = _QUEUED.order_by(jobs.c.priority.desc(), jobs.c.id).limit(PAGE)
_NEXT_PAGE = (
    _QUEUED.where(
        (jobs.c.priority < bindparam("a_prio"))
        | ((jobs.c.priority == bindparam("a_prio")) & (jobs.c.id > bindparam("a_id")))
    )
    .order_by(jobs.c.priority.desc(), jobs.c.id)
    .limit(PAGE)
)


def _queued_page(conn: Connection, after: tuple[int, str] | None) -> list[Any]:
    """Queued jobs in (priority desc, id) order, one page past ``after``.

    Reading in pages keeps a pass cheap when the queue is long and the pools are full, which
    is exactly when passes are most frequent.
    """
    if after is None:
        return list(conn.execute(_FIRST_PAGE).all())
    return list(conn.execute(_NEXT_PAGE, {"a_prio": after[0], "a_id": after[1]}).all())


_RESERVE = (
    update(pools)
    .where(
        pools.c.cpi == bindparam("b_pool"),
        pools.c.status == PoolStatus.online.value,
        pools.c.alloc_cpus + bindparam("r_cpus") <= pools.c.cap_cpus + 1e-9,
        pools.c.alloc_memory + bindparam("r_memory") <= pools.c.cap_memory,
        pools.c.alloc_gpus + bindparam("r_gpus") <= pools.c.cap_gpus,
    )
    .values(
        alloc_cpus=pools.c.alloc_cpus + bindparam("r_cpus"),
        alloc_memory=pools.c.alloc_memory + bindparam("r_memory"),
        alloc_gpus=pools.c.alloc_gpus + bindparam("r_gpus"),
    )
)
_UNRESERVE = (
    update(pools)
    .where(pools.c.cpi == bindparam("b_pool"))
    .values(
        alloc_cpus=pools.c.alloc_cpus - bindparam("r_cpus"),
        alloc_memory=pools.c.alloc_memory - bindparam("r_memory"),
        alloc_gpus=pools.c.alloc_gpus - bindparam("r_gpus"),
    )
)
_BIND = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.state == JobState.QUEUED.value)
    .values(
        state=JobState.SCHEDULED.value,
        pool_cpi=bindparam("b_pool"),
        attempt=jobs.c.attempt + 1,
        scheduled_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
        reason="",
    )
    .returning(jobs.c.attempt)
)


def _bind(conn: Connection, job: JobView, pool: PoolView, now: float) -> bool:
    req = job.request
    params = {
        "b_pool": pool.cpi,
        "b_id": job.id,
        "b_now": now,
        "r_cpus": req.cpus,
        "r_memory": req.memory_bytes,
        "r_gpus": req.gpus,
    }
    if not conn.execute(_RESERVE, params).rowcount:
        pool.free = Capacity()  # someone else took it; re-read next pass
        return False
    bound = conn.execute(_BIND, params).first()
    if bound is None:
        conn.execute(_UNRESERVE, params)
        return False
    conn.execute(
        attempts.insert(),
        {
            "job_id": job.id,
            "number": bound.attempt,
            "pool_cpi": pool.cpi,
            "state": JobState.SCHEDULED.value,
            "cpus": req.cpus,
            "memory": req.memory_bytes,
            "gpus": req.gpus,
            "devices": _pick_devices(conn, pool.cpi, req.gpus),
            "delivered": False,
            "cancel_delivered": False,
            "scheduled_at": now,
            "reason": "",
        },
    )
    return True


def _pick_devices(conn: Connection, pool_cpi: str, count: int) -> list[int]:
    """Lowest-numbered accelerators not held by a live attempt on the pool."""
    if count == 0:
        return []
    live = [JobState.SCHEDULED.value, JobState.STAGING.value, JobState.RUNNING.value]
    held: set[int] = set()
    for (devs,) in conn.execute(
        select(attempts.c.devices).where(
            attempts.c.pool_cpi == pool_cpi, attempts.c.state.in_(live)
        )
    ).all():
        held.update(devs)
    free = (i for i in range(1 << 16) if i not in held)
    return [next(free) for _ in range(count)]


def ever_fits(conn: Connection, request: Capacity, pin: str | None) -> str | None:
    """Why no registered pool could ever run this request, or None if one could."""
    q = select(pools.c.cpi, pools.c.cap_cpus, pools.c.cap_memory, pools.c.cap_gpus)
    if pin:
        q = q.where(pools.c.cpi == pin)
    found = conn.execute(q).all()
    if pin and not found:
        return f"no pool {pin}"
    if not found:
        return None
    reasons = []
    for r in found:
        cap = Capacity(cpus=r.cap_cpus, memory_bytes=r.cap_memory, gpus=r.cap_gpus)
        why = shortfall(request, cap, "the pool has")
        if why is None:
            return None
        reasons.append(f"{r.cpi} {why}")
    return "no pool can ever run it: " + "; ".join(reasons[:3])
