"""Job persistence: submit, read, cancel, and the agents' reports that move jobs along."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select, update

from computenet.model import (
    Assignment,
    AttemptRef,
    Directives,
    IllegalTransition,
    Job,
    JobPage,
    JobSpec,
    JobState,
    ReportBatch,
    check_transition,
)
from computenet.model.job import passed
from computenet.node.errors import NotFound
from computenet.node.store import rows
from computenet.node.store.pools import take_calibration
from computenet.node.store.tables import attempts, jobs, logs, pools, usage

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_JOB_ID = re.compile(r"j-[0-9a-z]{1,40}")


def _b36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out))


def new_job_id() -> str:
    """Time-ordered, so that ordering by id is ordering by submission, across replicas."""
    return "j-" + _b36(time.time_ns() // 1000, 11) + _b36(int.from_bytes(os.urandom(5)), 7)


def _values(tenant: str, spec: JobSpec, now: float) -> dict[str, Any]:
    return {
        "id": new_job_id(),
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


def insert(conn: Connection, tenant: str, spec: JobSpec, now: float | None = None) -> Job:
    return insert_many(conn, tenant, [spec], now)[0]


def insert_many(
    conn: Connection, tenant: str, specs: list[JobSpec], now: float | None = None
) -> list[Job]:
    now = time.time() if now is None else now
    values = [_values(tenant, spec, now) for spec in specs]
    conn.execute(jobs.insert(), values)
    return [
        Job(
            id=v["id"],
            tenant=tenant,
            name=spec.name,
            spec=spec,
            state=JobState.QUEUED,
            created_at=rows.ts(now),
        )
        for v, spec in zip(values, specs, strict=True)
    ]


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


def count_open(conn: Connection) -> dict[str, int]:
    """Every tenant's jobs not yet ended, by state: by index, however many have ended."""
    live = [s.value for s in JobState if not s.terminal]
    q = select(jobs.c.state, func.count()).where(jobs.c.state.in_(live)).group_by(jobs.c.state)
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


_LIVE = (JobState.SCHEDULED.value, JobState.STAGING.value, JobState.RUNNING.value)
_IN_FLIGHT = (
    select(attempts, jobs.c.tenant, jobs.c.spec, jobs.c.cancel_requested)
    .join(jobs, and_(jobs.c.id == attempts.c.job_id, jobs.c.attempt == attempts.c.number))
    .where(attempts.c.pool_cpi == bindparam("b_pool"), attempts.c.state.in_(_LIVE))
    .order_by(attempts.c.scheduled_at)
)
_UNDELIVERED = _IN_FLIGHT.where(
    (attempts.c.delivered.is_(False))
    | (jobs.c.cancel_requested.is_(True) & attempts.c.cancel_delivered.is_(False))
)
_OF_POOL = and_(
    attempts.c.pool_cpi == bindparam("b_pool"),
    attempts.c.job_id.in_(bindparam("ids", expanding=True)),
)
_DELIVERED = update(attempts).where(_OF_POOL).values(delivered=True)
_CANCEL_DELIVERED = update(attempts).where(_OF_POOL).values(cancel_delivered=True)


def directives(conn: Connection, pool_cpi: str, resync: bool = False) -> Directives:
    """Undelivered assignments and cancels for one pool, marked delivered as they are read.

    ``resync`` re-sends everything still in flight: an agent that restarted lost what it had.
    """
    found = conn.execute(_IN_FLIGHT if resync else _UNDELIVERED, {"b_pool": pool_cpi}).all()
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
        conn.execute(_DELIVERED, {"b_pool": pool_cpi, "ids": sent})
    if cancels:
        conn.execute(_CANCEL_DELIVERED, {"b_pool": pool_cpi, "ids": cancels})
    out.calibrate = take_calibration(conn, pool_cpi)
    return out


@dataclass
class Applied:
    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    released: bool = False
    touched: set[str] = field(default_factory=set)
    ended: dict[str, int] = field(default_factory=dict)


# Statements on the reporting path are built once: rebuilding them per call costs more
# than running them.
_CURRENT = (
    select(
        jobs.c.id,
        jobs.c.state,
        jobs.c.attempt,
        jobs.c.pool_cpi,
        jobs.c.tenant,
        attempts.c.cpus,
        attempts.c.memory,
        attempts.c.gpus,
        attempts.c.started_at.label("attempt_started_at"),
    )
    .join(attempts, and_(attempts.c.job_id == jobs.c.id, attempts.c.number == jobs.c.attempt))
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(jobs.c.id)
    .with_for_update(of=jobs)
)
_JOB_WHERE = and_(jobs.c.id == bindparam("b_id"), jobs.c.attempt == bindparam("b_attempt"))
_ATT_WHERE = and_(
    attempts.c.job_id == bindparam("b_id"), attempts.c.number == bindparam("b_attempt")
)
_SET_JOB = {
    "plain": update(jobs)
    .where(_JOB_WHERE)
    .values(state=bindparam("b_state"), updated_at=bindparam("b_now")),
    "running": update(jobs)
    .where(_JOB_WHERE)
    .values(
        state=bindparam("b_state"), updated_at=bindparam("b_now"), started_at=bindparam("b_at")
    ),
    "ended": update(jobs)
    .where(_JOB_WHERE)
    .values(
        state=bindparam("b_state"),
        updated_at=bindparam("b_now"),
        ended_at=bindparam("b_at"),
        exit_code=bindparam("b_exit"),
        reason=bindparam("b_reason"),
    ),
}
_SET_ATTEMPT = {
    "plain": update(attempts).where(_ATT_WHERE).values(state=bindparam("b_state")),
    "running": update(attempts)
    .where(_ATT_WHERE)
    .values(state=bindparam("b_state"), started_at=bindparam("b_at")),
    "ended": update(attempts)
    .where(_ATT_WHERE)
    .values(
        state=bindparam("b_state"),
        ended_at=bindparam("b_at"),
        exit_code=bindparam("b_exit"),
        reason=bindparam("b_reason"),
    ),
}
_RELEASE = (
    update(pools)
    .where(pools.c.cpi == bindparam("b_pool"))
    .values(
        alloc_cpus=pools.c.alloc_cpus - bindparam("d_cpus"),
        alloc_memory=pools.c.alloc_memory - bindparam("d_memory"),
        alloc_gpus=pools.c.alloc_gpus - bindparam("d_gpus"),
    )
)
_OWNERS = select(jobs.c.id, jobs.c.attempt, jobs.c.pool_cpi).where(
    jobs.c.id.in_(bindparam("ids", expanding=True))
)


def apply_reports(conn: Connection, pool_cpi: str, batch: ReportBatch) -> Applied:
    """Logs first, then state, so a reader who sees a job end has already seen its output.
    The jobs' rows are locked in id order: a retried batch that races its original waits
    for it, then finds its states already applied instead of releasing capacity twice."""
    result = Applied()
    if batch.logs:
        _apply_logs(conn, pool_cpi, batch, result)
    if not batch.reports:
        return result
    ids = list({r.job_id for r in batch.reports})
    current = {r.id: r for r in conn.execute(_CURRENT, {"ids": ids}).all()}
    state_of = {i: JobState(r.state) for i, r in current.items()}
    now = time.time()
    released: dict[str, float] = {"d_cpus": 0.0, "d_memory": 0, "d_gpus": 0}
    usage_rows = []
    for rep in batch.reports:
        cur = current.get(rep.job_id)
        if cur is None or cur.pool_cpi != pool_cpi:
            result.refused.append(f"{rep.job_id}#{rep.attempt}: not an attempt of this pool")
            continue
        if rep.attempt != cur.attempt:
            result.refused.append(
                f"{rep.job_id}#{rep.attempt}: stale attempt (current is {cur.attempt})"
            )
            continue
        old = state_of[rep.job_id]
        if old is rep.state or passed(old, rep.state):
            result.accepted += 1  # a retried or late report: already applied
            continue
        try:
            check_transition(old, rep.state)
        except IllegalTransition as e:
            result.refused.append(f"{rep.job_id}#{rep.attempt}: {e}")
            continue
        shape = (
            "ended"
            if rep.state.terminal
            else "running"
            if rep.state is JobState.RUNNING
            else "plain"
        )
        params = {
            "b_id": rep.job_id,
            "b_attempt": rep.attempt,
            "b_state": rep.state.value,
            "b_now": now,
            "b_at": rep.at,
            "b_exit": rep.exit_code,
            "b_reason": rep.reason,
        }
        conn.execute(_SET_JOB[shape], params)
        conn.execute(_SET_ATTEMPT[shape], params)
        state_of[rep.job_id] = rep.state
        result.accepted += 1
        result.touched.add(rep.job_id)
        if rep.state.terminal:
            result.released = True
            result.ended[rep.state.value] = result.ended.get(rep.state.value, 0) + 1
            released["d_cpus"] += cur.cpus
            released["d_memory"] += cur.memory
            released["d_gpus"] += cur.gpus
            if rep.usage is not None:
                started = cur.attempt_started_at
                if started is None:
                    started = rep.at - rep.usage.wall_seconds
                usage_rows.append(
                    {
                        "job_id": rep.job_id,
                        "attempt": rep.attempt,
                        "tenant": cur.tenant,
                        "pool_cpi": pool_cpi,
                        "cpus": cur.cpus,
                        "memory": cur.memory,
                        "gpus": cur.gpus,
                        "wall_seconds": rep.usage.wall_seconds,
                        "cpu_seconds": rep.usage.cpu_seconds,
                        "max_rss_bytes": rep.usage.max_rss_bytes,
                        "started_at": started,
                        "ended_at": rep.at,
                    }
                )
    if result.released:
        conn.execute(_RELEASE, {"b_pool": pool_cpi, **released})
    if usage_rows:
        conn.execute(usage.insert(), usage_rows)
    return result


_LOG_ENDS = select(logs.c.job_id, logs.c.attempt, logs.c.stream, logs.c.offset, logs.c.data).where(
    logs.c.id.in_(
        select(func.max(logs.c.id))
        .where(logs.c.job_id.in_(bindparam("ids", expanding=True)))
        .group_by(logs.c.job_id, logs.c.attempt, logs.c.stream)
    )
)


def _apply_logs(conn: Connection, pool_cpi: str, batch: ReportBatch, result: Applied) -> None:
    """Chunks carry their character offset in the stream, so a chunk sent twice (a retried
    report, an agent that re-read its files after a restart) is stored once."""
    ids = list({c.job_id for c in batch.logs})
    owners = {r.id: r for r in conn.execute(_OWNERS, {"ids": ids}).all()}
    ends = {
        (r.job_id, r.attempt, r.stream): r.offset + len(r.data.decode(errors="replace"))
        for r in conn.execute(_LOG_ENDS, {"ids": ids}).all()
    }
    rows = []
    for chunk in batch.logs:
        cur = owners.get(chunk.job_id)
        if cur is None or cur.attempt != chunk.attempt or cur.pool_cpi != pool_cpi:
            result.refused.append(f"{chunk.job_id}#{chunk.attempt}: not an attempt of this pool")
            continue
        key = (chunk.job_id, chunk.attempt, chunk.stream)
        end = ends.get(key, 0)
        text, offset = chunk.data, chunk.offset
        if offset < end:  # already stored, in whole or in part
            text, offset = text[end - offset :], end
        if not text:
            continue
        ends[key] = offset + len(text)
        rows.append(
            {
                "job_id": chunk.job_id,
                "attempt": chunk.attempt,
                "stream": chunk.stream,
                "offset": offset,
                "data": text.encode(),
            }
        )
        result.touched.add(chunk.job_id)
    if rows:
        conn.execute(logs.insert(), rows)


def requeue_pool(conn: Connection, pool_cpi: str, max_attempts: int) -> dict[str, str]:
    """Takes every live attempt away from a pool that went offline.

    Each job goes back to the queue for a new attempt, or fails once it has used
    ``max_attempts``. The old attempt is closed here; should its agent come back, its
    reports are refused (the attempt number is the fence) and its heartbeat answer tells it
    to stop the process. Returns job id -> its new state.
    """
    found = conn.execute(
        select(
            jobs.c.id,
            jobs.c.attempt,
            jobs.c.state,
            attempts.c.cpus,
            attempts.c.memory,
            attempts.c.gpus,
        )
        .join(attempts, and_(attempts.c.job_id == jobs.c.id, attempts.c.number == jobs.c.attempt))
        .where(jobs.c.pool_cpi == pool_cpi, jobs.c.state.in_(_LIVE))
    ).all()
    now = time.time()
    out: dict[str, str] = {}
    freed = {"d_cpus": 0.0, "d_memory": 0, "d_gpus": 0}
    for r in found:
        reason = f"pool {pool_cpi} went offline"
        give_up = r.attempt >= max_attempts
        new_state = JobState.FAILED if give_up else JobState.QUEUED
        check_transition(JobState(r.state), new_state)
        values: dict[str, Any] = {"state": new_state.value, "updated_at": now}
        if give_up:
            values.update(ended_at=now, reason=f"{reason}; gave up after {r.attempt} attempts")
        else:
            values.update(pool_cpi=None, reason=f"requeued: {reason}")
        moved = conn.execute(
            update(jobs)
            .where(jobs.c.id == r.id, jobs.c.attempt == r.attempt, jobs.c.state == r.state)
            .values(**values)
        ).rowcount
        if not moved:
            continue  # another replica got there first
        conn.execute(
            update(attempts)
            .where(attempts.c.job_id == r.id, attempts.c.number == r.attempt)
            .values(state=JobState.FAILED.value, ended_at=now, reason=f"lost: {reason}")
        )
        freed["d_cpus"] += r.cpus
        freed["d_memory"] += r.memory
        freed["d_gpus"] += r.gpus
        out[r.id] = new_state.value
    if out:
        conn.execute(_RELEASE, {"b_pool": pool_cpi, **freed})
    return out


def stale_attempts(conn: Connection, pool_cpi: str, running: list[str]) -> list[AttemptRef]:
    """Of the attempts an agent says it runs, those that are no longer current on its pool."""
    refs = []
    for key in running:
        job_id, _, number = key.partition("#")
        if _JOB_ID.fullmatch(job_id) and number.isdigit() and 0 < int(number) < 2**31:
            refs.append((job_id, int(number)))
    if not refs:
        return []
    current = {r.id: r for r in conn.execute(_OWNERS, {"ids": list({j for j, _ in refs})}).all()}
    stale = []
    for job_id, attempt in refs:
        cur = current.get(job_id)
        if cur is None or cur.attempt != attempt or cur.pool_cpi != pool_cpi:
            stale.append(AttemptRef(job_id=job_id, attempt=attempt))
    return stale


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


_DELIVERED_WAITING = select(
    attempts.c.job_id, attempts.c.number, attempts.c.pool_cpi, attempts.c.scheduled_at
).where(
    attempts.c.state == JobState.SCHEDULED.value,
    attempts.c.delivered.is_(True),
    attempts.c.scheduled_at < bindparam("b_before"),
)
_REDELIVER = (
    update(attempts)
    .where(
        attempts.c.job_id == bindparam("b_job"),
        attempts.c.number == bindparam("b_number"),
        attempts.c.state == JobState.SCHEDULED.value,
    )
    .values(delivered=False)
)


def lost_assignments(
    conn: Connection, holding: dict[str, tuple[float, frozenset[str]]], grace: float
) -> list[dict[str, Any]]:
    """Assignments sent but never received: sent, say, to the long poll of an agent that
    died while it waited, so that the answer went nowhere. ``holding`` is what each pool's
    latest heartbeat said it holds, and when that heartbeat came. An assignment the pool
    still does not hold ``grace`` seconds after it was placed is sent again (an agent
    that has it after all ignores the repeat)."""
    now = time.time()
    lost = []
    for r in conn.execute(_DELIVERED_WAITING, {"b_before": now - grace}):
        seen = holding.get(r.pool_cpi)
        if seen and seen[0] > r.scheduled_at + grace and f"{r.job_id}#{r.number}" not in seen[1]:
            lost.append({"b_job": r.job_id, "b_number": r.number, "b_pool": r.pool_cpi})
    return lost


def redeliver(conn: Connection, lost: list[dict[str, Any]]) -> None:
    conn.execute(_REDELIVER, lost)
