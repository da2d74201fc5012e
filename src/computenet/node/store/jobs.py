"""Job persistence: submit, read, cancel, and the agents' reports that move jobs along."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, select, update

from computenet.model import (
    Assignment,
    AttemptRef,
    Directives,
    IllegalTransition,
    Job,
    JobPage,
    JobSpec,
    JobState,
    Report,
    ReportBatch,
    check_transition,
)
from computenet.node.errors import NotFound
from computenet.node.store import rows
from computenet.node.store.tables import attempts, jobs, logs, pools, usage

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out))


def new_job_id() -> str:
    """Time-ordered, so that ordering by id is ordering by submission, across replicas."""
    return "j-" + _b36(time.time_ns() // 1000, 11) + _b36(int.from_bytes(os.urandom(5)), 7)


def insert(conn: Connection, tenant: str, spec: JobSpec, now: float | None = None) -> Job:
    now = time.time() if now is None else now
    job_id = new_job_id()
    values = {
        "id": job_id,
        "tenant": tenant,
        "name": spec.name,
        "spec": spec.model_dump(mode="json", exclude_defaults=True),
        "state": JobState.QUEUED.value,
        "priority": spec.priority,
        "req_cpus": spec.resources.cpus,
        "req_memory": spec.resources.memory,
        "req_gpus": spec.resources.gpus,
        "pin_pool": spec.pool,
        "pool_cpi": None,
        "attempt": 0,
        "exit_code": None,
        "reason": "",
        "cancel_requested": False,
        "created_at": now,
        "scheduled_at": None,
        "started_at": None,
        "ended_at": None,
        "updated_at": now,
    }
    conn.execute(jobs.insert().values(**values))
    return rows.job(_Row(values))


class _Row:
    def __init__(self, values: dict[str, object]) -> None:
        self.__dict__.update(values)


def get(conn: Connection, job_id: str, tenant: str | None) -> Job:
    """``tenant=None`` is the operator's view; anyone else sees only their own jobs."""
    q = select(jobs).where(jobs.c.id == job_id)
    if tenant is not None:
        q = q.where(jobs.c.tenant == tenant)
    row = conn.execute(q).first()
    if row is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    att = conn.execute(
        select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
    ).all()
    return rows.job(row, list(att))


def list_page(
    conn: Connection,
    tenant: str | None,
    states: list[JobState] | None = None,
    pool: str | None = None,
    name: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> JobPage:
    q = select(jobs).order_by(jobs.c.id.desc()).limit(limit + 1)
    if tenant is not None:
        q = q.where(jobs.c.tenant == tenant)
    if states:
        q = q.where(jobs.c.state.in_([s.value for s in states]))
    if pool:
        q = q.where(jobs.c.pool_cpi == pool)
    if name:
        q = q.where(jobs.c.name == name)
    if cursor:
        q = q.where(jobs.c.id < cursor)
    found = conn.execute(q).all()
    page = [rows.job(r) for r in found[:limit]]
    return JobPage(items=page, next=page[-1].id if len(found) > limit else None)


def count_by_state(conn: Connection, tenant: str | None) -> dict[str, int]:
    q = select(jobs.c.state, func.count()).group_by(jobs.c.state)
    if tenant is not None:
        q = q.where(jobs.c.tenant == tenant)
    return {state: n for state, n in conn.execute(q).all()}


def request_cancel(conn: Connection, job_id: str, tenant: str | None, now: float) -> Job:
    """A queued job ends at once; a placed one ends when its agent confirms the kill."""
    job = get(conn, job_id, tenant)
    if job.state.terminal:
        return job
    if job.state is JobState.QUEUED:
        n = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state == JobState.QUEUED.value)
            .values(
                state=JobState.CANCELED.value,
                reason="canceled before it was placed",
                ended_at=now,
                updated_at=now,
                cancel_requested=True,
            )
        ).rowcount
        if n:
            return get(conn, job_id, tenant)
        job = get(conn, job_id, tenant)  # placed meanwhile: cancel through its agent
    conn.execute(
        update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True, updated_at=now)
    )
    conn.execute(
        update(attempts)
        .where(attempts.c.job_id == job_id, attempts.c.number == job.attempt)
        .values(cancel_delivered=False)
    )
    return get(conn, job_id, tenant)


def directives(conn: Connection, pool_cpi: str, resync: bool = False) -> Directives:
    """Undelivered assignments and cancels for one pool, marked delivered as they are read.

    ``resync`` re-sends everything still in flight: an agent that restarted lost what it had.
    """
    live = [JobState.SCHEDULED.value, JobState.STAGING.value, JobState.RUNNING.value]
    q = (
        select(attempts, jobs.c.tenant, jobs.c.spec, jobs.c.cancel_requested)
        .join(jobs, and_(jobs.c.id == attempts.c.job_id, jobs.c.attempt == attempts.c.number))
        .where(attempts.c.pool_cpi == pool_cpi, attempts.c.state.in_(live))
    )
    if not resync:
        q = q.where(
            (attempts.c.delivered.is_(False))
            | (jobs.c.cancel_requested.is_(True) & attempts.c.cancel_delivered.is_(False))
        )
    found = conn.execute(q.order_by(attempts.c.scheduled_at)).all()
    out = Directives()
    sent, cancels = [], []
    for r in found:
        if r.cancel_requested:
            # Never start what is already canceled; the agent confirms, which frees the slot.
            out.cancel.append(AttemptRef(job_id=r.job_id, attempt=r.number))
            cancels.append(r.job_id)
            continue
        if resync or not r.delivered:
            out.assign.append(
                Assignment(
                    job_id=r.job_id,
                    attempt=r.number,
                    tenant=r.tenant,
                    spec=JobSpec.model_validate(r.spec),
                    devices=list(r.devices),
                )
            )
            sent.append(r.job_id)
    if sent:
        conn.execute(
            update(attempts)
            .where(attempts.c.pool_cpi == pool_cpi, attempts.c.job_id.in_(sent))
            .values(delivered=True)
        )
    if cancels:
        conn.execute(
            update(attempts)
            .where(attempts.c.pool_cpi == pool_cpi, attempts.c.job_id.in_(cancels))
            .values(cancel_delivered=True)
        )
    return out


@dataclass
class Applied:
    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    released: bool = False
    touched: set[str] = field(default_factory=set)
    ended: dict[str, int] = field(default_factory=dict)


def apply_reports(conn: Connection, pool_cpi: str, batch: ReportBatch) -> Applied:
    """Logs first, then state, so a reader who sees a job end has already seen its output."""
    result = Applied()
    for chunk in batch.logs:
        current = conn.execute(
            select(jobs.c.attempt, jobs.c.pool_cpi).where(jobs.c.id == chunk.job_id)
        ).first()
        if current is None or current.attempt != chunk.attempt or current.pool_cpi != pool_cpi:
            result.refused.append(f"{chunk.job_id}#{chunk.attempt}: not an attempt of this pool")
            continue
        conn.execute(
            logs.insert().values(
                job_id=chunk.job_id,
                attempt=chunk.attempt,
                stream=chunk.stream,
                offset=chunk.offset,
                data=chunk.data.encode(),
            )
        )
        result.touched.add(chunk.job_id)
    if not batch.reports:
        return result
    ids = list({r.job_id for r in batch.reports})
    current_rows = {
        r.id: r
        for r in conn.execute(
            select(
                jobs.c.id,
                jobs.c.state,
                jobs.c.attempt,
                jobs.c.pool_cpi,
                jobs.c.tenant,
                jobs.c.started_at,
            ).where(jobs.c.id.in_(ids))
        ).all()
    }
    state_of = {i: JobState(r.state) for i, r in current_rows.items()}
    for rep in batch.reports:
        cur = current_rows.get(rep.job_id)
        if cur is None or cur.pool_cpi != pool_cpi:
            result.refused.append(f"{rep.job_id}#{rep.attempt}: not an attempt of this pool")
            continue
        if rep.attempt != cur.attempt:
            result.refused.append(
                f"{rep.job_id}#{rep.attempt}: stale attempt (current is {cur.attempt})"
            )
            continue
        old = state_of[rep.job_id]
        if old is rep.state:
            result.accepted += 1  # a retried report: already applied
            continue
        try:
            check_transition(old, rep.state)
        except IllegalTransition as e:
            result.refused.append(f"{rep.job_id}#{rep.attempt}: {e}")
            continue
        _apply_one(conn, pool_cpi, cur, rep)
        state_of[rep.job_id] = rep.state
        result.accepted += 1
        result.touched.add(rep.job_id)
        if rep.state.terminal:
            result.released = True
            result.ended[rep.state.value] = result.ended.get(rep.state.value, 0) + 1
    return result


def _apply_one(conn: Connection, pool_cpi: str, cur: Any, rep: Report) -> None:
    now = time.time()
    job_values: dict[str, object] = {"state": rep.state.value, "updated_at": now}
    att_values: dict[str, object] = {"state": rep.state.value}
    if rep.state is JobState.RUNNING:
        job_values["started_at"] = rep.at
        att_values["started_at"] = rep.at
    if rep.state.terminal:
        job_values.update(ended_at=rep.at, exit_code=rep.exit_code, reason=rep.reason)
        att_values.update(ended_at=rep.at, exit_code=rep.exit_code, reason=rep.reason)
    conn.execute(
        update(jobs)
        .where(jobs.c.id == rep.job_id, jobs.c.attempt == rep.attempt)
        .values(**job_values)
    )
    conn.execute(
        update(attempts)
        .where(attempts.c.job_id == rep.job_id, attempts.c.number == rep.attempt)
        .values(**att_values)
    )
    if rep.state.terminal:
        release(conn, rep.job_id, rep.attempt, pool_cpi)
        if rep.usage is not None:
            _record_usage(conn, pool_cpi, cur, rep)


def release(conn: Connection, job_id: str, attempt: int, pool_cpi: str) -> None:
    a = conn.execute(
        select(attempts.c.cpus, attempts.c.memory, attempts.c.gpus).where(
            attempts.c.job_id == job_id, attempts.c.number == attempt
        )
    ).one()
    conn.execute(
        update(pools)
        .where(pools.c.cpi == pool_cpi)
        .values(
            alloc_cpus=pools.c.alloc_cpus - a.cpus,
            alloc_memory=pools.c.alloc_memory - a.memory,
            alloc_gpus=pools.c.alloc_gpus - a.gpus,
        )
    )


def _record_usage(conn: Connection, pool_cpi: str, cur: Any, rep: Report) -> None:
    assert rep.usage is not None
    a = conn.execute(
        select(attempts).where(attempts.c.job_id == rep.job_id, attempts.c.number == rep.attempt)
    ).one()
    started = a.started_at if a.started_at is not None else rep.at - rep.usage.wall_seconds
    conn.execute(
        usage.insert().values(
            job_id=rep.job_id,
            attempt=rep.attempt,
            tenant=cur.tenant,
            pool_cpi=pool_cpi,
            cpus=a.cpus,
            memory=a.memory,
            gpus=a.gpus,
            wall_seconds=rep.usage.wall_seconds,
            cpu_seconds=rep.usage.cpu_seconds,
            max_rss_bytes=rep.usage.max_rss_bytes,
            started_at=started,
            ended_at=rep.at,
        )
    )


def read_logs(
    conn: Connection, job_id: str, after: int = 0, limit: int = 500
) -> list[tuple[int, int, str, bytes]]:
    q = (
        select(logs.c.id, logs.c.attempt, logs.c.stream, logs.c.data)
        .where(logs.c.job_id == job_id, logs.c.id > after)
        .order_by(logs.c.id)
        .limit(limit)
    )
    return [(r.id, r.attempt, r.stream, r.data) for r in conn.execute(q).all()]
