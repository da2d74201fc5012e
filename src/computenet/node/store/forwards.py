"""Jobs run at another node of the tree: which, under what id there, and their attempt here."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, and_, not_, select, update

from computenet.model import JobSpec, JobState
from computenet.node.store.tables import attempts, forwards, jobs


@dataclass(frozen=True)
class Waiting:
    job_id: str
    tenant: str
    spec: JobSpec
    pool: str


@dataclass(frozen=True)
class Followed:
    job_id: str
    attempt: int
    pool: str
    node_url: str
    owner: str
    remote_id: str
    tenant: str
    cancel_requested: bool


def waiting(conn: Connection, own_code: str) -> list[Waiting]:
    """Queued jobs pinned to a pool that another node minted: they go there."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.tenant, jobs.c.spec, jobs.c.pin_pool)
        .where(
            jobs.c.state == JobState.QUEUED.value,
            jobs.c.pin_pool.is_not(None),
            not_(jobs.c.pin_pool.like(f"cpi:{own_code}:%")),
        )
        .order_by(jobs.c.created_at)
        .limit(100)
    ).all()
    return [Waiting(r.id, r.tenant, JobSpec.model_validate(r.spec), r.pin_pool) for r in rows]


def bind(conn: Connection, w: Waiting, node_url: str, owner: str, remote_id: str) -> int | None:
    """The job is placed: on a pool of ``owner``, as ``remote_id`` there."""
    now = time.time()
    row = conn.execute(
        update(jobs)
        .where(jobs.c.id == w.job_id, jobs.c.state == JobState.QUEUED.value)
        .values(
            state=JobState.SCHEDULED.value,
            pool_cpi=w.pool,
            attempt=jobs.c.attempt + 1,
            scheduled_at=now,
            updated_at=now,
            reason=f"forwarded to {owner} as {remote_id}",
        )
        .returning(jobs.c.attempt)
    ).first()
    if row is None:
        return None
    r = w.spec.resources
    conn.execute(
        attempts.insert(),
        {
            "job_id": w.job_id,
            "number": row.attempt,
            "pool_cpi": w.pool,
            "state": JobState.SCHEDULED.value,
            "cpus": r.cpus,
            "memory": r.memory,
            "gpus": r.gpus,
            "devices": [],
            "delivered": True,
            "cancel_delivered": False,
            "scheduled_at": now,
            "reason": "",
        },
    )
    conn.execute(
        forwards.insert().values(
            job_id=w.job_id,
            attempt=row.attempt,
            node_url=node_url,
            owner=owner,
            remote_id=remote_id,
            created_at=now,
        )
    )
    return int(row.attempt)


def waits_there(conn: Connection, f: Followed, why: str) -> bool:
    """Says, in the job's reason, why the owner has not started it yet: here it is only
    SCHEDULED, and the user would not otherwise see that it waits. True if it changed."""
    reason = f"forwarded to {f.owner} as {f.remote_id}" + (f"; there: {why}" if why else "")
    done = conn.execute(
        update(jobs)
        .where(
            jobs.c.id == f.job_id,
            jobs.c.attempt == f.attempt,
            jobs.c.state == JobState.SCHEDULED.value,
            jobs.c.reason != reason[:4096],
        )
        .values(reason=reason[:4096], updated_at=time.time())
    )
    return bool(done.rowcount)


def refuse(conn: Connection, job_id: str, reason: str) -> None:
    now = time.time()
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == JobState.QUEUED.value)
        .values(state=JobState.FAILED.value, reason=reason, ended_at=now, updated_at=now)
    )


def followed(conn: Connection) -> list[Followed]:
    """Forwarded jobs not over yet here."""
    live = [JobState.SCHEDULED.value, JobState.STAGING.value, JobState.RUNNING.value]
    rows = conn.execute(
        select(forwards, jobs.c.tenant, jobs.c.cancel_requested, jobs.c.pool_cpi)
        .join(jobs, and_(jobs.c.id == forwards.c.job_id, jobs.c.attempt == forwards.c.attempt))
        .where(jobs.c.state.in_(live))
    ).all()
    return [
        Followed(
            r.job_id,
            r.attempt,
            r.pool_cpi,
            r.node_url,
            r.owner,
            r.remote_id,
            r.tenant,
            bool(r.cancel_requested),
        )
        for r in rows
    ]


def cancel_requested(conn: Connection, job_id: str) -> bool:
    row = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).first()
    return bool(row and row.cancel_requested)
