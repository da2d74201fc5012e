"""Datasets: publish a tree that sits in a pool as a version, list them, find their copies;
and the agents' side of staging, where a pool asks where its job's data is.

The node never reads the data. A version's tree hash comes from the copy that put it in
the pool; every later copy is checked against it by the end that receives it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from computenet.ident.cpi import CPIStr
from computenet.model import Job, JobState, PoolStatus
from computenet.model.dataset import (
    NAME_RE,
    VERSION_RE,
    CopiesAsk,
    Dataset,
    DatasetPage,
    DatasetPublish,
    DatasetRef,
    DatasetVersion,
    PoolCopies,
    PoolRef,
    ReplicaAdd,
    StagingAsk,
    StagingLanded,
    StagingPlan,
    parse_data_uri,
    split_input,
    unrecordable,
)
from computenet.model.transfer import Direction, TransferRequest
from computenet.node import homes
from computenet.node.auth import Principal, node_of, principal, signed_pool
from computenet.node.errors import Conflict, Forbidden, Invalid
from computenet.node.routers.transfers import home_quota, issue, writable
from computenet.node.runtime import Node
from computenet.node.sched.scores.locality import DEFAULT_RATE
from computenet.node.store import datasets as store
from computenet.node.store import jobs as job_store
from computenet.node.store import links as link_store
from computenet.node.store import pools as pool_store
from computenet.transfer.paths import PathError, normalise, within

router = APIRouter(prefix="/v1", tags=["datasets"])
Name = Annotated[str, Path(pattern=NAME_RE.pattern)]
Version = Annotated[str, Path(pattern=VERSION_RE.pattern)]
STAGE_TTL = 6 * 3600.0
_LIVE = (JobState.SCHEDULED, JobState.STAGING, JobState.RUNNING)


def _pool_path(path: str, field: str = "path") -> str:
    try:
        return "/" + normalise(path)
    except PathError as e:
        raise Invalid(str(e), field=field) from e


async def _reached(node: Node, who: Principal, pool: str, path: str) -> None:
    """A copy is never written again, so recording one is held to what the tenant may
    write: it cannot freeze another tenant's files, nor read them as a dataset."""
    if not who.admin:
        where = path.strip("/")
        await node.reading(homes.check, who.tenant, pool, where, Direction.put, "path")


@router.post("/datasets", status_code=201, response_model=DatasetVersion)
async def publish(
    body: DatasetPublish, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> DatasetVersion:
    path = _pool_path(body.path)
    if (why := unrecordable(path)) is not None:
        raise Invalid(why, "path")
    await _reached(node, who, body.pool, path)
    await node.reading(pool_store.get, body.pool)
    return await node.writing(
        store.publish,
        who.tenant,
        body.name,
        body.version,
        body.pool,
        path,
        body.tree_hash,
        body.total_bytes,
        body.files,
    )


@router.get("/datasets", response_model=DatasetPage)
async def list_datasets(
    _: Principal = Depends(principal),
    node: Node = Depends(node_of),
    limit: Annotated[int, Query(ge=1, le=1000, description="datasets per page")] = 100,
    after: Annotated[str | None, Query(pattern=NAME_RE.pattern)] = None,
) -> DatasetPage:
    return await node.reading(store.list_page, limit, after)


@router.get("/datasets/{name}", response_model=Dataset)
async def get_dataset(
    name: Name, _: Principal = Depends(principal), node: Node = Depends(node_of)
) -> Dataset:
    return await node.reading(store.get, name)


@router.post("/datasets/{name}/{version}/replicas", status_code=201, response_model=DatasetVersion)
async def add_replica(
    name: Name,
    version: Version,
    body: ReplicaAdd,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
) -> DatasetVersion:
    """A copy made with ``cnet cp`` into another pool; the dataset's owner (or an admin)
    vouches for it, and the tree hash must match."""
    v = await node.reading(store.resolve, DatasetRef(name, version), "version")
    if v.tenant != who.tenant and not who.admin:
        raise Forbidden(f"dataset {name!r} belongs to tenant {v.tenant}", field="name")
    path = _pool_path(body.path)
    if (why := unrecordable(path)) is not None:
        raise Invalid(why, "path")
    await _reached(node, who, body.pool, path)
    await node.reading(pool_store.get, body.pool)
    return await node.writing(store.add_replica, name, version, body.pool, path, body.tree_hash)


@router.delete("/datasets/{name}/{version}", response_model=DatasetVersion)
async def forget(
    name: Name,
    version: Version,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
) -> DatasetVersion:
    """Forgets a version and the records of its copies, and answers what it was, copies
    included: the data itself stays until removed (``cnet dataset rm`` does both). Only
    the dataset's owner or an admin. Jobs that still have to stage it fail, naming it."""
    return await node.writing(store.forget, name, version, who.tenant, who.admin)


# --- the agents' side ------------------------------------------------------------------


async def _job_of(node: Node, signer: str, job_id: str, attempt: int) -> Job:
    """The job, if this pool runs this attempt of it now; an agent stages nothing else."""
    job = await node.reading(job_store.get, job_id, None)
    if job.pool != signer or job.attempt != attempt or job.state not in _LIVE:
        raise Forbidden(f"pool {signer} does not run {job_id} attempt {attempt}", "job_id")
    return job


async def _asked(
    node: Node, signer: str, body: StagingAsk | StagingLanded
) -> tuple[Job, str, DatasetRef | PoolRef]:
    """The job, and the input or output the agent asks about, as the job's spec names it."""
    job = await _job_of(node, signer, body.job_id, body.attempt)
    items = job.spec.inputs if body.kind == "input" else job.spec.outputs
    if body.index >= len(items):
        raise Invalid(f"{job.id} has {len(items)} {body.kind}s", field="index")
    uri = split_input(items[body.index].uri)[0]  # a part of a version: staged whole
    return job, uri, parse_data_uri(uri)


async def _holder(node: Node, v: DatasetVersion, signer: str) -> tuple[str, str]:
    """A pool that holds the version and can serve it now; this pool's own copy first,
    then the one whose link to this pool has measured fastest (the link the scheduler
    counted). The live index answers; the database only for a pool it does not hold yet
    (one that registered through another replica since the index last loaded)."""
    pools = {r.pool: e.pool for r in v.replicas if (e := node.index.entries.get(r.pool))}
    if len(pools) < len({r.pool for r in v.replicas}):
        pools = {p.cpi: p for p in await node.reading(pool_store.list_all)} | pools
    online = [
        r
        for r in v.replicas
        if (p := pools.get(r.pool)) is not None
        and p.status is not PoolStatus.offline
        and p.data is not None
    ]
    if not online:
        if not v.replicas:  # its last copy was found changed and forgotten
            raise Conflict(f"no pool holds an intact copy of {v.uri} any more", field="uri")
        raise Conflict(f"no pool that holds {v.uri} is online", field="uri")
    rates = await node.reading(link_store.rates) if len(online) > 1 else {}
    online.sort(key=lambda r: (r.pool != signer, -rates.get((r.pool, signer), DEFAULT_RATE)))
    return online[0].pool, online[0].path


async def _fetch_place(node: Node, pool: str, v: DatasetVersion, spoiled: str | None) -> str:
    """Where a pool fetches a version it lacks: ``/datasets/NAME/VERSION``, or beside
    ``/datasets/NAME`` where that (or a path on the way) is another copy already, or
    the spoiled copy the new one replaces, which is removed after it."""
    first: Conflict | None = None
    gone = spoiled.strip("/") if spoiled else None
    for place in (f"/datasets/{v.name}/{v.version}", f"/datasets/{v.name}@{v.version}"):
        at = place.strip("/")
        if gone and (within(gone, at) or within(at, gone)) and at != gone:
            continue
        try:
            await writable(node, pool, place.strip("/"), "uri", whole=True)
            return place
        except Conflict as e:
            first = first or e
    raise first or Conflict(f"no place in pool {pool} to fetch {v.uri} into", field="uri")


@router.post("/pools/{pool:path}/staging", response_model=StagingPlan)
async def staging(
    pool: CPIStr,
    body: StagingAsk,
    signer: str = Depends(signed_pool),
    node: Node = Depends(node_of),
) -> StagingPlan:
    job, uri, ref = await _asked(node, signer, body)
    if isinstance(ref, PoolRef):
        if ref.pool == signer:
            local = _pool_path(ref.path)
            plan = StagingPlan(uri=uri, local=local)
            if body.kind == "output":  # placed by replacing what is there
                await writable(node, signer, local.strip("/"), "uri", whole=True)
                plan.home_quota = await home_quota(
                    node, job.tenant, local.strip("/"), Direction.put
                )
                plan.home = None if plan.home_quota is None else homes.home(job.tenant)
            return plan
        way = Direction.get if body.kind == "input" else Direction.put
        req = TransferRequest(
            pool=ref.pool, path=ref.path, direction=way, size=body.size, ttl=STAGE_TTL
        )
        return StagingPlan(uri=uri, grant=await issue(node, job.tenant, req))
    if body.kind == "input":
        v = await node.reading(store.resolve, ref)
        discard = None
        if body.spoiled is not None:
            spoiled = _pool_path(body.spoiled, "spoiled")
            if await node.writing(store.drop_replica, v.name, v.version, signer, spoiled):
                v = await node.reading(store.resolve, ref)
                under = spoiled.strip("/")
                overlaps = await node.reading(store.held_at, signer, under)
                if under.startswith("datasets/") and not overlaps:
                    discard = spoiled  # made by staging or publishing: the agent's to remove
        holder, path = await _holder(node, v, signer)
        plan = StagingPlan(uri=v.uri, tree_hash=v.tree_hash, total_bytes=v.total_bytes)
        if holder == signer:
            plan.local = path
        else:
            req = TransferRequest(pool=holder, path=path, direction=Direction.get, ttl=STAGE_TTL)
            plan.keep = await _fetch_place(node, signer, v, discard)
            plan.grant = await issue(node, job.tenant, req)
            plan.discard = discard if discard != plan.keep else None
        return plan
    if ref.version is not None:  # one not yet published (nor removed) may become it
        why = await node.reading(store.taken, ref.name, ref.version)
        if why is not None:
            raise Conflict(why, field="uri")
    # A directory of the output's own: two jobs making one version must not meet there.
    local = f"/datasets/{ref.name}/{job.id}.{body.index}"
    await writable(node, signer, local.strip("/"), "uri", whole=True)
    return StagingPlan(uri=uri, local=local)


@router.post("/pools/{pool:path}/copies", response_model=PoolCopies)
async def copies(
    pool: CPIStr,
    body: CopiesAsk,
    signer: str = Depends(signed_pool),
    node: Node = Depends(node_of),
) -> PoolCopies:
    """The dataset copies at, above or below a path of the asking pool: its data server
    keeps every put out of them, checking when the put starts and when it commits."""
    path = _pool_path(body.path).strip("/")
    held = await node.reading(store.held_at, signer, path)
    return PoolCopies(copies=sorted({where for _, _, where in held}))


@router.post("/pools/{pool:path}/staging/landed", response_model=DatasetVersion)
async def landed(
    pool: CPIStr,
    body: StagingLanded,
    signer: str = Depends(signed_pool),
    node: Node = Depends(node_of),
) -> DatasetVersion:
    """A dataset input fetched into this pool (a new replica), or an output published."""
    job, _, ref = await _asked(node, signer, body)
    if isinstance(ref, PoolRef):
        raise Invalid("only datasets are recorded; a pool path needs no record", field="kind")
    path = _pool_path(body.path)
    if body.kind == "input":
        v = await node.reading(store.resolve, ref)
        added = await node.writing(
            store.add_replica, v.name, v.version, signer, path, body.tree_hash
        )
        m = body.moved
        if (  # a new copy's fetch, from a pool that held the version, of no more than it
            m is not None
            and m.source != signer
            and m.bytes <= v.total_bytes
            and all(r.pool != signer for r in v.replicas)
            and any(r.pool == m.source for r in v.replicas)
        ):
            await node.writing(link_store.record, m.source, signer, m.bytes, m.seconds)
        return added
    return await node.writing(
        store.publish,
        job.tenant,
        ref.name,
        ref.version,
        signer,
        path,
        body.tree_hash,
        body.total_bytes,
        body.files,
    )
