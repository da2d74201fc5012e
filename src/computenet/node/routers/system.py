"""Health, node status, and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from computenet import __version__
from computenet.model import JobState, Model, PoolStatus
from computenet.node import metrics as metrics_
from computenet.node.auth import Principal, node_of, principal
from computenet.node.runtime import Node
from computenet.node.store import jobs as job_store
from computenet.node.store import pools as pool_store

router = APIRouter(tags=["system"])


class NodeStatus(Model):
    code: str
    version: str
    database: str
    uptime_seconds: float
    pools: dict[str, int]
    jobs: dict[str, int]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/status", response_model=NodeStatus)
async def status(who: Principal = Depends(principal), node: Node = Depends(node_of)) -> NodeStatus:
    pools = await node.reading(pool_store.list_all)
    by_status: dict[str, int] = {}
    for p in pools:
        by_status[p.status.value] = by_status.get(p.status.value, 0) + 1
    return NodeStatus(
        code=node.settings.code,
        version=__version__,
        database=node.store.engine.dialect.name,
        uptime_seconds=round(time.time() - node.started_at, 1),
        pools=by_status,
        jobs=await node.reading(job_store.count_by_state, who.scope),
    )


FRESH = 5.0  # seconds the gauges stand: a scrape needs no token, so it may come often
_gauged_at = [-FRESH]


@router.get("/metrics", include_in_schema=False)
async def metrics(node: Node = Depends(node_of)) -> Response:
    if time.monotonic() - _gauged_at[0] >= FRESH:
        _gauged_at[0] = time.monotonic()
        await _gauge(node)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _gauge(node: Node) -> None:
    by_status = dict.fromkeys(PoolStatus, 0)
    cap = dict.fromkeys(("cpus", "memory_bytes", "gpus"), 0.0)
    free = dict(cap)
    for e in node.index.entries.values():
        by_status[e.pool.status] += 1
        if e.pool.status is PoolStatus.online:
            c, f = e.pool.capacity, e.free
            cap["cpus"] += c.cpus
            cap["memory_bytes"] += c.memory_bytes
            cap["gpus"] += c.gpus
            free["cpus"] += max(0.0, f.cpus)
            free["memory_bytes"] += max(0, f.memory_bytes)
            free["gpus"] += max(0, f.gpus)
    for status, n in by_status.items():
        metrics_.POOLS.labels(status.value).set(n)
    for key in cap:
        metrics_.CAPACITY.labels(key).set(cap[key])
        metrics_.FREE.labels(key).set(free[key])
    open_jobs = await node.reading(job_store.count_open)
    for state in JobState:
        if not state.terminal:
            metrics_.JOBS.labels(state.value).set(open_jobs.get(state.value, 0))
