"""Providers and pools, and the agents' side of the API (heartbeats, directives, reports)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from computenet.ident.cpi import CPIStr
from computenet.model import (
    CalibrationRequest,
    Directives,
    Heartbeat,
    HeartbeatAck,
    Pool,
    PoolRegistration,
    Provider,
    ProviderRegistration,
    ReportBatch,
    ReportResult,
    Role,
)
from computenet.model.common import as_text
from computenet.node.auth import Principal, node_of, principal, signed_pool
from computenet.node.beats import take
from computenet.node.errors import Unauthorized
from computenet.node.metrics import JOBS_ENDED, REFUSED
from computenet.node.runtime import GATHER, Node
from computenet.node.sched.binder import PassResult, schedule_pass
from computenet.node.store import jobs as job_store
from computenet.node.store import pools as pool_store

router = APIRouter(prefix="/v1", tags=["pools"])
PoolPath = Annotated[CPIStr, "pool CPI"]


@router.post("/providers", status_code=201, response_model=Provider)
async def register_provider(
    body: ProviderRegistration,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
) -> Provider:
    who.require(Role.provider)
    return await node.writing(pool_store.register_provider, node.settings.code, body, who.tenant)


@router.get("/providers", response_model=list[Provider])
async def list_providers(
    _: Principal = Depends(principal), node: Node = Depends(node_of)
) -> list[Provider]:
    return await node.reading(pool_store.list_providers)


@router.post("/pools", status_code=201, response_model=Pool)
async def register_pool(
    body: PoolRegistration,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
) -> Pool:
    who.require(Role.provider)
    pool = await node.writing(
        pool_store.register_pool,
        node.settings.code,
        body,
        who.token.id,
        node.settings.suspect_after,
    )
    node.remember_pool_key(pool.cpi, pool.public_key, who.token.id)
    node.index.put(pool)
    node.events.schedule.set()
    return pool


@router.get("/pools", response_model=list[Pool])
async def list_pools(
    _: Principal = Depends(principal), node: Node = Depends(node_of)
) -> list[Pool]:
    return await node.reading(pool_store.list_all)


@router.post("/pools/{pool:path}/calibrate", status_code=202, response_model=CalibrationRequest)
async def calibrate(
    pool: PoolPath, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> CalibrationRequest:
    """Asks the pool's agent to measure its machine again (``cnet pool calibrate``); the
    new figures arrive with its next registration, a few seconds later."""
    who.require(Role.provider)
    req = await node.writing(pool_store.request_calibration, pool, who.scope)
    node.events.pools.notify(pool)
    return req


@router.post("/pools/{pool:path}/heartbeat", response_model=HeartbeatAck)
async def heartbeat(
    pool: PoolPath,
    hb: Heartbeat,
    signer: str = Depends(signed_pool),
    node: Node = Depends(node_of),
) -> HeartbeatAck:
    if not math.isfinite(hb.sent_at) or abs(hb.sent_at - time.time()) > 300:
        raise Unauthorized("heartbeat timestamp outside the accepted window", field="sent_at")

    return HeartbeatAck(stop=await take(node, signer, hb))


@router.post("/pools/{pool:path}/leave", status_code=204)
async def leave(
    pool: PoolPath, signer: str = Depends(signed_pool), node: Node = Depends(node_of)
) -> None:
    """The agent is stopping: its pool takes no new work until it heartbeats again."""
    if await node.writing(pool_store.leave, signer):
        await node.reindex([signer])


@router.get("/pools/{pool:path}/directives", response_model=Directives)
async def directives(
    pool: PoolPath,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
    resync: bool = False,
    signer: str = Depends(signed_pool),
    node: Node = Depends(node_of),
) -> Directives:
    """Long poll: answers at once when there is work or a cancel, else within ``wait``."""
    deadline = time.monotonic() + wait
    while True:
        seen = node.events.pools.version(signer)
        if await request.is_disconnected():  # an agent gone: what it would be sent stays
            return Directives()
        out = await node.writing(job_store.directives, signer, resync)
        resync = False
        left = deadline - time.monotonic()
        if (
            out.assign
            or out.cancel
            or out.calibrate
            or left <= 0
            or node.events.closing.is_set()
            or await request.is_disconnected()
        ):
            return out
        # Re-read at least every second: another replica may have placed work here.
        if await node.events.pools.wait(signer, seen, min(left, 1.0)):
            await asyncio.sleep(GATHER)  # let the rest of a burst land in the same answer


@router.post("/pools/{pool:path}/reports", response_model=ReportResult)
async def reports(
    pool: PoolPath,
    batch: ReportBatch,
    signer: str = Depends(signed_pool),
    node: Node = Depends(node_of),
) -> ReportResult:
    """State and log reports; the answer carries new directives, saving the agent a round trip.
    A job's output is whatever it wrote: NUL and lone surrogates are taken as U+FFFD (an
    agent that sends them is not refused, and its later reports not held back)."""
    for chunk in batch.logs:
        chunk.data = as_text(chunk.data)
    for report in batch.reports:
        report.reason = as_text(report.reason)

    def run() -> tuple[job_store.Applied, PassResult, Directives]:
        with node.store.write() as conn:
            applied = job_store.apply_reports(conn, signer, batch)
            placed = schedule_pass(conn, node.profile) if applied.released else PassResult()
            return applied, placed, job_store.directives(conn, signer, False)

    applied, placed, out = await node.db(run)
    if applied.released or placed.placed:
        await node.reindex(placed.pools | {signer})
    REFUSED.inc(len(applied.refused))
    for state, n in applied.ended.items():
        JOBS_ENDED.labels(state).inc(n)
    node.events.jobs.notify_many(applied.touched | set(placed.placed))
    node.events.pools.notify_many(placed.pools - {signer})
    return ReportResult(accepted=applied.accepted, refused=applied.refused, directives=out)


# Last: a path parameter this wide would otherwise take the routes above.
@router.get("/pools/{pool:path}", response_model=Pool)
async def get_pool(
    pool: PoolPath, _: Principal = Depends(principal), node: Node = Depends(node_of)
) -> Pool:
    return await node.reading(pool_store.get, pool)
