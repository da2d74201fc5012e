"""Reserve and bind: the one step that turns a ranking into a placement, atomically.

The reservation is a conditional UPDATE on the pool's allocation (it succeeds only if the
resources are still free) and the bind a conditional UPDATE on the job (only if it is still
QUEUED), in one transaction. Several node replicas on one PostgreSQL can therefore run
passes at the same time: the loser of a race sees zero rows and moves on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, literal, or_, select, update

from computenet.model import Capacity, JobState, PoolStatus, Price
from computenet.model.dataset import DataURIError, PoolRef, parse_data_uri, split_input
from computenet.model.job import accelerators
from computenet.model.plan import Plan, PlanCandidate, PlanRejection
from computenet.node.metrics import PLACED, SCHEDULE_PASS
from computenet.node.sched.framework import (
    DEFAULT_HOURS,
    Context,
    JobView,
    PoolView,
    Profile,
    Ranking,
)
from computenet.node.sched.scores.locality import UNSIZED
from computenet.node.store import links as link_store
from computenet.node.store import tenants as tenant_store
from computenet.node.store.datasets import Holdings
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


_POOLS = (
    select(
        pools.c.cpi,
        pools.c.region,
        pools.c.labels,
        pools.c.cap_cpus,
        pools.c.cap_memory,
        pools.c.cap_gpus,
        pools.c.alloc_cpus,
        pools.c.alloc_memory,
        pools.c.alloc_gpus,
        pools.c.price,
        pools.c.carbon_intensity,
        pools.c.scu,
        pools.c.queue_factor,
        pools.c.traits,
    )
    .where(pools.c.status == PoolStatus.online.value)
    .order_by(pools.c.registered_at)
)


def load_pools(conn: Connection) -> list[PoolView]:
    out = []
    for i, r in enumerate(conn.execute(_POOLS).all()):
        cap = Capacity(cpus=r.cap_cpus, memory_bytes=r.cap_memory, gpus=r.cap_gpus)
        alloc = Capacity(
            cpus=max(0.0, r.alloc_cpus),
            memory_bytes=max(0, r.alloc_memory),
            gpus=max(0, r.alloc_gpus),
        )
        price = Price.model_validate(r.price) if r.price else None
        q = 1 + r.queue_factor
        room = Capacity(
            cpus=cap.cpus * q, memory_bytes=int(cap.memory_bytes * q), gpus=int(cap.gpus * q)
        )
        out.append(
            PoolView(
                r.cpi,
                r.region,
                r.labels,
                cap,
                room.minus(alloc),
                i,
                price,
                r.carbon_intensity,
                r.scu,
                *_traits(r.traits),
            )
        )
    return out


def _traits(t: Any) -> tuple[tuple[tuple[int, str, str], ...], frozenset[str]]:
    if not t:
        return (), frozenset()
    devices = tuple((int(i), str(e), str(v)) for i, e, v in t.get("devices", ()))
    return devices, frozenset(t.get("archs", ()))


_RUNNING = (
    select(
        attempts.c.pool_cpi,
        attempts.c.cpus,
        attempts.c.memory,
        attempts.c.gpus,
        attempts.c.started_at,
        attempts.c.scheduled_at,
        jobs.c.spec,
    )
    .join(jobs, and_(jobs.c.id == attempts.c.job_id, jobs.c.attempt == attempts.c.number))
    .where(
        attempts.c.state.in_(
            [JobState.SCHEDULED.value, JobState.STAGING.value, JobState.RUNNING.value]
        )
    )
)


class Releases:
    """When each pool's running work ends, read once per pass and only if asked."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._by_pool: dict[str, list[tuple[float, Capacity]]] | None = None

    def _load(self) -> dict[str, list[tuple[float, Capacity]]]:
        by_pool: dict[str, list[tuple[float, Capacity]]] = {}
        now = time.time()
        for r in self._conn.execute(_RUNNING).all():
            limit = (r.spec.get("resources") or {}).get("time") or DEFAULT_HOURS * 3600
            began = r.started_at or r.scheduled_at or now
            by_pool.setdefault(r.pool_cpi, []).append(
                (max(now, began + limit), Capacity(cpus=r.cpus, memory_bytes=r.memory, gpus=r.gpus))
            )
        for ends in by_pool.values():
            ends.sort(key=lambda e: e[0])
        return by_pool

    def start_estimate(self, pool: PoolView, request: Capacity) -> float:
        """Seconds until enough of the pool's running work has ended for ``request``."""
        if self._by_pool is None:
            self._by_pool = self._load()
        free, now = pool.free, time.time()
        for ends_at, cap in self._by_pool.get(pool.cpi, []):
            free = Capacity(
                cpus=free.cpus + cap.cpus,
                memory_bytes=free.memory_bytes + cap.memory_bytes,
                gpus=free.gpus + cap.gpus,
            )
            if free.fits(request):
                return round(ends_at - now, 3)
        return DEFAULT_HOURS * 3600  # placed by this pass, not yet visible: a guess


def context(conn: Connection, profile: Profile, views: list[PoolView]) -> Context:
    holdings = Holdings(conn)
    return Context(
        start_estimate=Releases(conn).start_estimate,
        latency_ms=profile.latency_ms,
        data=data_of(holdings),
        link_rate=rates_of(conn),
        online=frozenset(v.cpi for v in views),
        copies=copies_of(holdings),
    )


def rates_of(conn: Connection) -> Callable[[str, str], float | None]:
    """The measured links, read once a pass and only when a job has inputs to move."""
    known: dict[tuple[str, str], float] | None = None

    def rate(source: str, destination: str) -> float | None:
        nonlocal known
        if known is None:
            known = link_store.rates(conn)
        return known.get((source, destination))

    return rate


def data_of(holdings: Holdings) -> Callable[[str], tuple[int, frozenset[str]] | None]:
    """A pool path is held by its pool, at a size the node does not know (``UNSIZED``);
    a dataset by its replicas."""

    def data(uri: str) -> tuple[int, frozenset[str]] | None:
        try:
            ref = parse_data_uri(split_input(uri)[0])  # a part of a version: it moves whole
        except DataURIError:
            return None
        if isinstance(ref, PoolRef):
            return UNSIZED, frozenset({ref.pool})
        return holdings.dataset(ref)

    return data


def copies_of(holdings: Holdings) -> Callable[[str], frozenset[str]]:
    """This node's pools that hold an input, online or not: a pool path's own pool where
    it is this node's, a dataset's every recorded copy."""

    def copies(uri: str) -> frozenset[str]:
        try:
            ref = parse_data_uri(split_input(uri)[0])
        except DataURIError:
            return frozenset()
        if isinstance(ref, PoolRef):
            return frozenset({ref.pool}) if holdings.registered(ref.pool) else frozenset()
        return holdings.copies(ref)

    return copies


def job_view(row: Any) -> JobView:
    spec = row.spec or {}
    res = spec.get("resources") or {}
    return JobView(
        row.id,
        row.tenant,
        Capacity(cpus=row.req_cpus, memory_bytes=row.req_memory, gpus=row.req_gpus),
        row.pin_pool,
        row.priority,
        row.created_at,
        time_limit=res.get("time"),
        optimize=spec.get("optimize"),
        regions=tuple(spec.get("regions") or ()),
        **device_wishes(res.get("accelerator"), res.get("vendor"), res.get("arch")),
        variants=frozenset(spec.get("variants") or ()),
        inputs=tuple(i["uri"] for i in spec.get("inputs") or ()),
    )


def device_wishes(
    accelerator: str | None, vendors: list[str] | None, archs: list[str] | None
) -> dict[str, Any]:
    """The JobView fields for ``--accelerator``, ``--vendor`` and ``--arch``."""
    return {
        "accelerator": accelerator,
        "accel": accelerators(accelerator).entries if accelerator else None,
        "vendors": tuple(vendors or ()),
        "archs": tuple(archs or ()),
    }


def plan(conn: Connection, profile: Profile, job: JobView) -> Plan:
    """What a pass would do with this job now, without doing it."""
    views = load_pools(conn)
    ranking = profile.rank(job, views, context(conn, profile, views))
    choice, decision = None, "no pool can run it"
    pinned = job.pool and not ranking and job.pool not in ranking.rejected
    if pinned and conn.execute(_REGISTERED_HERE, {"cpi": job.pool}).first() is not None:
        decision = f"would wait for {job.pool}, which is not online"  # as a pass does
    for cand in ranking.candidates:
        if not cand.fits_now:
            decision = f"would wait for {cand.pool.cpi} (about {cand.est_start_s:.0f}s)"
            break
        choice, decision = cand.pool.cpi, f"would run on {cand.pool.cpi} now"
        break
    return Plan(
        goal=job.optimize or profile.default_goal,
        choice=choice,
        decision=decision,
        candidates=[
            PlanCandidate(
                pool=c.pool.cpi,
                region=c.pool.region,
                fits_now=c.fits_now,
                est_start_s=c.est_start_s,
                est_cost=None if c.est_cost is None else round(c.est_cost, 4),
                currency=c.pool.price.currency if c.pool.price else None,
                scu=c.pool.scu,
                score=c.total,
                parts=c.parts,
                raw={k: (None if v is None else round(v, 4)) for k, v in c.raw.items()},
            )
            for c in ranking.candidates
        ],
        rejected=[PlanRejection(pool=p, reason=r) for p, r in ranking.rejected.items()],
    )


def schedule_pass(conn: Connection, profile: Profile) -> PassResult:
    with SCHEDULE_PASS.time():
        result = _pass(conn, profile)
    PLACED.inc(len(result.placed))
    return result


def _pass(conn: Connection, profile: Profile) -> PassResult:
    result = PassResult()
    if conn.execute(_ANY_QUEUED).first() is None:
        return result  # idle: no need to read every pool
    views = load_pools(conn)
    if not views:
        conn.execute(_NONE_ONLINE)  # each says why it waits, once
        conn.execute(_PIN_NOT_ONLINE)
        return result
    ctx = context(conn, profile, views)
    share = FairShare(conn, views)
    pins: dict[str, bool] = {}  # pinned pools not online: whether they are this node's
    now = time.time()
    changed: list[dict[str, str]] = []
    while share.queues and any(v.free.cpus > 0 for v in views):
        tenant = share.next_tenant()
        row = share.pop(tenant)
        job = job_view(row)
        why = share.over_quota(tenant, job.request)
        if why is None:
            placed, why = _place(conn, job, profile.rank(job, views, ctx), now, pins)
            if placed is not None:
                result.placed[job.id] = placed
                share.charge(tenant, job.request)
        if why:
            result.waiting[job.id] = why
            if why != row.reason:
                changed.append({"b_id": job.id, "b_reason": why})
        result.scanned += 1
        if result.scanned >= MAX_SCAN:
            break
    else:
        if share.queues:  # no pool has a CPU free: the rest are not ranked, but say why
            conn.execute(_ALL_BUSY)
    if changed:  # tell the user why a job waits (only when the reason changed)
        conn.execute(_WAIT_REASON, changed)
    return result


_NOT_ONLINE = literal("waiting for ") + jobs.c.pin_pool + literal(", which is not online")
_NONE_ONLINE = (
    update(jobs)
    .where(
        jobs.c.state == JobState.QUEUED.value,
        jobs.c.pin_pool.is_(None),
        jobs.c.reason != "no pool online",
    )
    .values(reason="no pool online")
)
_PIN_NOT_ONLINE = (
    update(jobs)
    .where(
        jobs.c.state == JobState.QUEUED.value,
        jobs.c.pin_pool.in_(select(pools.c.cpi)),  # another node's pool: forwarding's
        jobs.c.reason != _NOT_ONLINE,
    )
    .values(reason=_NOT_ONLINE)
)
_ONLINE_HERE = select(pools.c.cpi).where(pools.c.status == PoolStatus.online.value)
_ALL_BUSY = (  # not a job for another node's pool, nor one pinned to a pool not online
    update(jobs)
    .where(
        jobs.c.state == JobState.QUEUED.value,
        jobs.c.reason == "",
        or_(jobs.c.pin_pool.is_(None), jobs.c.pin_pool.in_(_ONLINE_HERE)),
    )
    .values(reason="waiting for capacity: no pool online has a CPU free")
)
_REGISTERED_HERE = select(pools.c.cpi).where(pools.c.cpi == bindparam("cpi"))

_ANY_QUEUED = select(jobs.c.id).where(jobs.c.state == JobState.QUEUED.value).limit(1)
_WAIT_REASON = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.state == JobState.QUEUED.value)
    .values(reason=bindparam("b_reason"))
)


_QUEUED = select(
    jobs.c.id,
    jobs.c.tenant,
    jobs.c.req_cpus,
    jobs.c.req_memory,
    jobs.c.req_gpus,
    jobs.c.pin_pool,
    jobs.c.priority,
    jobs.c.created_at,
    jobs.c.spec,
    jobs.c.reason,
).where(jobs.c.state == JobState.QUEUED.value, jobs.c.tenant == bindparam("t"))
_FIRST_PAGE = _QUEUED.order_by(jobs.c.priority.desc(), jobs.c.id).limit(PAGE)
_NEXT_PAGE = (
    _QUEUED.where(
        (jobs.c.priority < bindparam("a_prio"))
        | ((jobs.c.priority == bindparam("a_prio")) & (jobs.c.id > bindparam("a_id")))
    )
    .order_by(jobs.c.priority.desc(), jobs.c.id)
    .limit(PAGE)
)
_QUEUED_TENANTS = select(jobs.c.tenant).where(jobs.c.state == JobState.QUEUED.value).distinct()


class FairShare:
    """Weighted dominant-resource fair share between tenants, with quotas.

    Each tenant's queue is read a page at a time in its own priority order, which keeps a
    pass cheap when queues are long and pools full. The next job comes from the tenant whose
    dominant share (the largest fraction of CPUs or accelerators it holds), divided by its
    weight, is smallest.
    """

    def __init__(self, conn: Connection, views: list[PoolView]) -> None:
        self._conn = conn
        self.policies = tenant_store.policies(conn)
        self.usage = {t: [c, float(g)] for t, (c, g) in tenant_store.usage(conn).items()}
        self.total_cpus = sum(v.capacity.cpus for v in views) or 1.0
        self.total_gpus = float(sum(v.capacity.gpus for v in views))
        self.queues: dict[str, list[Any]] = {}
        self._more: dict[str, tuple[int, str] | None] = {}
        for (tenant,) in conn.execute(_QUEUED_TENANTS).all():
            self._read(tenant, None)

    def _read(self, tenant: str, after: tuple[int, str] | None) -> None:
        if after is None:
            page = self._conn.execute(_FIRST_PAGE, {"t": tenant}).all()
        else:
            params = {"t": tenant, "a_prio": after[0], "a_id": after[1]}
            page = self._conn.execute(_NEXT_PAGE, params).all()
        if not page:
            self.queues.pop(tenant, None)
            return
        self.queues[tenant] = list(page)
        full = len(page) == PAGE
        self._more[tenant] = (page[-1].priority, page[-1].id) if full else None

    def weight(self, tenant: str) -> float:
        policy = self.policies.get(tenant)
        return policy.weight if policy is not None else 1.0

    def dominant(self, tenant: str, cpus: float = 0.0, gpus: int = 0) -> float:
        """The tenant's weighted dominant share, counting ``cpus``/``gpus`` more."""
        held_cpus, held_gpus = self.usage.get(tenant, [0.0, 0.0])
        share = (held_cpus + cpus) / self.total_cpus
        if self.total_gpus:
            share = max(share, (held_gpus + gpus) / self.total_gpus)
        return share / self.weight(tenant)

    def next_tenant(self) -> str:
        """The tenant that would stand lowest after its next job: judging after the
        allocation, not before, keeps ties from drifting toward light tenants."""

        def key(t: str) -> tuple[float, str]:
            head = self.queues[t][0]
            return (self.dominant(t, head.req_cpus, head.req_gpus), head.id)

        return min(self.queues, key=key)

    def pop(self, tenant: str) -> Any:
        queue = self.queues[tenant]
        row = queue.pop(0)
        if not queue:
            after = self._more.get(tenant)
            if after is None:
                del self.queues[tenant]
            else:
                self._read(tenant, after)
        return row

    def over_quota(self, tenant: str, request: Capacity) -> str | None:
        policy = self.policies.get(tenant)
        if policy is None:
            return None
        cpus, gpus = self.usage.get(tenant, [0.0, 0.0])
        if policy.max_cpus is not None and cpus + request.cpus > policy.max_cpus + 1e-9:
            return f"tenant {tenant} quota: {cpus:g} of {policy.max_cpus:g} CPUs in use"
        if policy.max_gpus is not None and gpus + request.gpus > policy.max_gpus:
            return f"tenant {tenant} quota: {gpus:g} of {policy.max_gpus} GPUs in use"
        return None

    def charge(self, tenant: str, request: Capacity) -> None:
        use = self.usage.setdefault(tenant, [0.0, 0.0])
        use[0] += request.cpus
        use[1] += request.gpus


def _place(
    conn: Connection, job: JobView, ranking: Ranking, now: float, pins: dict[str, bool]
) -> tuple[str | None, str]:
    """Binds the best candidate that fits now, unless a better one is worth waiting for.

    A candidate that does not fit now but outranks every one that does holds the job: under
    ``--optimize cost`` the cheapest feasible pool is worth a wait.
    """
    if not ranking:
        if job.pool and job.pool not in ranking.rejected:
            if job.pool not in pins:  # asked once a pass: many jobs may wait for one pool
                pins[job.pool] = (
                    conn.execute(_REGISTERED_HERE, {"cpi": job.pool}).first() is not None
                )
            # Another node's pool is forwarding's to serve, and to tell of.
            return None, f"waiting for {job.pool}, which is not online" if pins[job.pool] else ""
        shown = [job.pool] if job.pool else list(ranking.rejected)[:3]
        reasons = "; ".join(f"{cpi}: {ranking.rejected[cpi]}" for cpi in shown)
        # Said of the pools online now: one that could run it may be offline, and come back.
        return None, f"no pool online can run it: {reasons}" if reasons else "no pool online"
    for cand in ranking.ordered():
        if not cand.fits_now:
            return None, f"waiting for {cand.pool.cpi} (about {cand.est_start_s:.0f}s)"
        if _bind(conn, job, cand.pool, now):
            cand.pool.free = cand.pool.free.minus(job.request)
            return cand.pool.cpi, ""
    return None, "every candidate was taken meanwhile"


_RESERVE = (
    update(pools)
    .where(
        pools.c.cpi == bindparam("b_pool"),
        pools.c.status == PoolStatus.online.value,
        # An engine with its own queue may hold more than it runs (``queue_factor``).
        pools.c.alloc_cpus + bindparam("r_cpus")
        <= pools.c.cap_cpus * (1 + pools.c.queue_factor) + 1e-9,
        pools.c.alloc_memory + bindparam("r_memory")
        <= pools.c.cap_memory * (1 + pools.c.queue_factor),
        pools.c.alloc_gpus + bindparam("r_gpus") <= pools.c.cap_gpus * (1 + pools.c.queue_factor),
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
    groups = job.usable_groups(pool) if pool.devices else None
    devices = _pick_devices(conn, pool.cpi, req.gpus, groups)
    bound = None if devices is None else conn.execute(_BIND, params).first()
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
            "devices": devices,
            "delivered": False,
            "cancel_delivered": False,
            "scheduled_at": now,
            "reason": "",
        },
    )
    return True


def _pick_devices(
    conn: Connection, pool_cpi: str, count: int, usable: list[list[int]] | None
) -> list[int] | None:
    """Lowest-numbered accelerators the job may have, all from one of the ``usable``
    groups (None: any), that no live attempt on the pool holds; None when too few are
    free in every group."""
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
    if usable is None:
        free = (i for i in range(1 << 16) if i not in held)
        return [next(free) for _ in range(count)]
    for group in sorted(usable, key=lambda g: min(g, default=1 << 16)):
        left = [i for i in sorted(set(group)) if i not in held]
        if len(left) >= count:
            return left[:count]
    return None


_REGISTERED = select(
    pools.c.cpi,
    pools.c.region,
    pools.c.labels,
    pools.c.cap_cpus,
    pools.c.cap_memory,
    pools.c.cap_gpus,
    pools.c.traits,
)


def ever_fits(conn: Connection, profile: Profile, job: JobView) -> str | None:
    """Why no registered pool, online or not, could ever run this job; None if one could.

    The profile's own filters decide, so that admission and placement never disagree: a
    job accepted at submit can be placed once capacity frees up.
    """
    found = conn.execute(_REGISTERED).all()
    if job.pool and not any(r.cpi == job.pool for r in found):
        return f"no pool {job.pool}"
    if not found:
        return None  # nothing registered yet: the job waits for the first pool
    views = [
        PoolView(
            r.cpi, r.region, r.labels, _cap(r), _cap(r), i, None, None, None, *_traits(r.traits)
        )
        for i, r in enumerate(found)
    ]
    rejected: dict[str, str] = {}
    ever = Context()  # what a pool could ever run: its data's pools may come back
    # The pools that come closest are named first: the most accelerators for a job that
    # asks for some, else the most CPUs.
    gpus = job.request.gpus > 0
    views.sort(key=lambda v: (v.capacity.gpus if gpus else 0, v.capacity.cpus), reverse=True)
    for view in views:
        reason = next((w for f in profile.filters if (w := f.filter(job, view, ever))), None)
        if reason is None:
            return None
        rejected[view.cpi] = reason
    shown = [
        f"{cpi} {why}" for cpi, why in rejected.items() if not why.startswith("the job is pinned")
    ]
    return "no pool can ever run it: " + "; ".join(shown[:3])


def _cap(r: Any) -> Capacity:
    return Capacity(cpus=r.cap_cpus, memory_bytes=r.cap_memory, gpus=r.cap_gpus)
