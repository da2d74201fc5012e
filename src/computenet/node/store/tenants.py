"""Tenant policies (weights and quotas) and what each tenant holds now."""

from __future__ import annotations

import time

from sqlalchemy import Connection, and_, func, select, update

from computenet.model import JobState, Tenant, TenantPolicy
from computenet.node.store.tables import attempts, jobs, tenants

_LIVE = (JobState.SCHEDULED.value, JobState.STAGING.value, JobState.RUNNING.value)


def policies(conn: Connection) -> dict[str, TenantPolicy]:
    return {
        r.name: TenantPolicy(
            weight=r.weight, max_cpus=r.max_cpus, max_gpus=r.max_gpus, max_data=r.max_data
        )
        for r in conn.execute(select(tenants)).all()
    }


def max_data(conn: Connection, name: str) -> int | None:
    """What the tenant's home may hold in each pool; None: no cap."""
    return conn.execute(
        select(tenants.c.max_data).where(tenants.c.name == name)
    ).scalar_one_or_none()


def usage(conn: Connection) -> dict[str, tuple[float, int]]:
    """CPUs and accelerators each tenant's live attempts hold."""
    q = (
        select(jobs.c.tenant, func.sum(attempts.c.cpus), func.sum(attempts.c.gpus))
        .join(jobs, and_(jobs.c.id == attempts.c.job_id, jobs.c.attempt == attempts.c.number))
        .where(attempts.c.state.in_(_LIVE))
        .group_by(jobs.c.tenant)
    )
    return {t: (float(c or 0), int(g or 0)) for t, c, g in conn.execute(q).all()}


def put(conn: Connection, name: str, policy: TenantPolicy) -> Tenant:
    values = {**policy.model_dump(), "updated_at": time.time()}
    if conn.execute(update(tenants).where(tenants.c.name == name).values(**values)).rowcount == 0:
        conn.execute(tenants.insert().values(name=name, **values))
    return get(conn, name)


def get(conn: Connection, name: str) -> Tenant:
    policy = policies(conn).get(name, TenantPolicy())
    cpus, gpus = usage(conn).get(name, (0.0, 0))
    return Tenant(name=name, cpus_in_use=cpus, gpus_in_use=gpus, **policy.model_dump())


def list_all(conn: Connection) -> list[Tenant]:
    pol, use = policies(conn), usage(conn)
    known = (
        set(pol)
        | set(use)
        | {r.tenant for r in conn.execute(select(jobs.c.tenant).distinct()).all()}
    )
    out = []
    for name in sorted(known):
        cpus, gpus = use.get(name, (0.0, 0))
        p = pol.get(name, TenantPolicy())
        out.append(Tenant(name=name, cpus_in_use=cpus, gpus_in_use=gpus, **p.model_dump()))
    return out
