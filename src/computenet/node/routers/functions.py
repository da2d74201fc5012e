"""Functions: sessions of warm workers, calls in, results out; and blobs for big payloads."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Annotated

import blake3
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse

from computenet.model import JobSpec
from computenet.model.functions import Calls, Hello, Results, Session, SessionCreate
from computenet.node.auth import Principal, node_of, principal
from computenet.node.calls import CLIENT_GONE, SessionState, mismatch
from computenet.node.errors import Busy, Conflict, NotFound, TooLarge, Unauthorized
from computenet.node.routers.jobs import admit, elsewhere
from computenet.node.runtime import Node
from computenet.node.store import jobs as job_store

router = APIRouter(prefix="/v1", tags=["functions"])
log = logging.getLogger("computenet.node")
SessionId = Annotated[str, Path(pattern=r"^s-[0-9a-f]{16}$")]
BlobId = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
HEADER_TOKEN = "X-CNet-Session-Token"
# The agent runs workers with its own Python, which has computenet and cloudpickle.
WORKER = ["sh", "-c", 'exec "${CNET_PYTHON:-python3}" -m computenet.functions.worker']
MAX_BLOB = int(os.environ.get("CNET_MAX_BLOB", str(64 << 30)))


@router.post("/functions/sessions", status_code=201, response_model=Session)
async def open_session(
    body: SessionCreate, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> Session:
    """Starts ``workers`` warm worker jobs with the session's resources."""
    if body.pool is not None and (entry := node.index.entries.get(body.pool)) is not None:
        recorded = entry.pool.runtime
        diff = mismatch(body.runtime, recorded) if recorded else []
        if diff:
            raise Conflict(f"runtime mismatch on {body.pool}: {'; '.join(diff)}", field="runtime")
    s, token = node.broker.open(who.tenant, body.runtime)
    spec = JobSpec(
        name=f"functions {s.id}",
        command=WORKER,
        env={"CNET_FN_SESSION": s.id, "CNET_FN_TOKEN": token},
        resources=body.resources,
        pool=body.pool,
        regions=body.regions,
        labels={"cnet.functions": s.id},
    )

    code = node.federation.code if node.federation.chain else ""
    if elsewhere(spec, code):  # its workers would call their own node, which lacks it
        node.broker.close(s.id)
        raise Conflict(
            f"{body.pool} is another node's pool: a function session runs on the pools of "
            "the node that holds it; open the session at that node",
            field="pool",
        )

    def run() -> list[str]:
        with node.store.write() as conn:
            admit(conn, node.profile, who.tenant, [spec], [""], code)
            return [j.id for j in job_store.insert_many(conn, who.tenant, [spec] * body.workers)]

    try:
        s.jobs = await node.db(run)
    except BaseException:
        node.broker.close(s.id)
        raise
    node.events.schedule.set()
    return Session(id=s.id, jobs=s.jobs, token=token)


def _mine(node: Node, sid: str, who: Principal) -> SessionState:
    s = node.broker.get(sid)
    if s is None or (s.tenant != who.tenant and not who.admin):
        raise NotFound(f"no function session {sid}", field="session")
    s.client_seen = time.monotonic()
    return s


async def reap_loop(node: Node) -> None:
    """Ends the sessions whose client went without closing them: a script that exited
    before ``shutdown``, a killed notebook. Their workers would run for ever."""
    while True:
        await asyncio.sleep(min(10.0, CLIENT_GONE / 3))
        for s in node.broker.abandoned():
            log.info("function session %s: its client is gone; stopping its workers", s.id)
            try:
                await end_session(node, s)
            except Exception:
                log.exception("stopping the workers of function session %s", s.id)


async def end_session(node: Node, s: SessionState) -> None:
    """Its workers are cancelled: calls not yet answered are dropped."""
    node.broker.close(s.id)
    now = time.time()
    for job_id in s.jobs:
        job = await node.writing(job_store.request_cancel, job_id, None, now)
        if job.pool and not job.state.terminal:
            node.events.pools.notify(job.pool)
        node.events.jobs.notify(job_id)


def _worker(request: Request, sid: str) -> SessionState:
    s = node_of(request).broker.get(sid)
    if s is None:
        raise NotFound(f"no function session {sid}", field="session")
    if not s.check(request.headers.get(HEADER_TOKEN, "")):
        raise Unauthorized("not a worker of this session", field="token")
    return s


@router.post("/functions/sessions/{sid}/calls", status_code=202)
async def send_calls(
    sid: SessionId, body: Calls, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> dict[str, int]:
    s = _mine(node, sid, who)
    if not s.room(body.calls):
        raise Busy(
            f"{len(s.calls):,} calls ({s.waiting_bytes:,} bytes) wait for this session's "
            "workers already: send these once they have taken some",
            field="calls",
        )
    s.push_calls(body.calls)
    return {"queued": len(s.calls)}


@router.get("/functions/sessions/{sid}/results", response_model=Results)
async def take_results(
    sid: SessionId,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
    most: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> Results:
    s = _mine(node, sid, who)
    if not s.results and not s.error and wait:
        await node.events.pause(s.results_ready, wait)
    return Results(results=s.take_results(most), error=s.error, workers=len(s.workers))


@router.delete("/functions/sessions/{sid}", status_code=204)
async def close_session(
    sid: SessionId, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> None:
    """Stops the workers; calls not yet answered are dropped."""
    await end_session(node, _mine(node, sid, who))


@router.post("/functions/sessions/{sid}/hello", response_model=Results)
async def hello(sid: SessionId, body: Hello, request: Request) -> Results:
    s = _worker(request, sid)
    s.hello(request.headers.get("X-CNet-Worker", "?")[:64], body.runtime)
    return Results(error=s.error)


@router.get("/functions/sessions/{sid}/calls", response_model=Calls)
async def take_calls(
    sid: SessionId,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
    most: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Calls:
    s = _worker(request, sid)
    if not s.calls and wait:
        await node_of(request).events.pause(s.calls_ready, wait)
    return Calls(calls=s.take_calls(most))


@router.post("/functions/sessions/{sid}/results", status_code=202)
async def give_results(sid: SessionId, body: Results, request: Request) -> dict[str, int]:
    s = _worker(request, sid)
    s.push_results(body.results)
    return {"accepted": len(body.results)}


# --- blobs: payloads too big to inline, by their BLAKE3 hash --------------------------------


async def _blob_caller(request: Request) -> str:
    """The tenant whose blobs these are: a user's, or that of the function session whose
    worker token (``X-CNet-Session``) is shown. Each tenant's are kept apart: a blob's
    hash is no secret, and another tenant could otherwise read it by the hash alone."""
    sid = request.headers.get("X-CNet-Session")
    if sid:
        return _worker(request, sid).tenant
    tenant = (await principal(request)).tenant
    node_of(request).broker.seen(tenant)
    return tenant


@router.put("/blobs", status_code=201)
async def put_blob(request: Request, tenant: str = Depends(_blob_caller)) -> dict[str, object]:
    """Streamed to disk and hashed on the way; stored under its hash, so a second upload
    of the same bytes is the same blob."""
    root = node_of(request).settings.data_dir / "blobs" / tenant
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = root / f".up-{os.getpid()}-{id(request)}"
    h, size = blake3.blake3(), 0
    try:
        with open(tmp, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BLOB:
                    raise TooLarge(f"a blob is at most {MAX_BLOB} bytes")
                h.update(chunk)
                f.write(chunk)
        digest = h.hexdigest()
        os.replace(tmp, root / digest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"id": digest, "size": size}


@router.get("/blobs/{blob}")
async def get_blob(
    blob: BlobId, request: Request, tenant: str = Depends(_blob_caller)
) -> FileResponse:
    path = node_of(request).settings.data_dir / "blobs" / tenant / blob
    if not path.is_file():
        raise NotFound(f"no blob {blob}", field="blob")
    return FileResponse(path, media_type="application/octet-stream")
