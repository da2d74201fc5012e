"""Jobs: submit, list, get, wait, cancel, and logs as a stream."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import Connection

from computenet.model import Capacity, Job, JobBatch, JobPage, JobSpec, JobState
from computenet.model.dataset import DataInput, DatasetRef, PoolRef, parse_data_uri, split_input
from computenet.model.job import overlap_reason, overlapping
from computenet.model.plan import Plan
from computenet.node import homes
from computenet.node.auth import Principal, node_of, principal
from computenet.node.errors import Conflict, Forbidden, Invalid, NotFound
from computenet.node.metrics import JOBS_SUBMITTED
from computenet.node.query import parse
from computenet.node.runtime import Node
from computenet.node.sched.binder import device_wishes, ever_fits
from computenet.node.sched.binder import plan as plan_job
from computenet.node.sched.framework import JobView, Profile
from computenet.node.sched.profile import GOALS
from computenet.node.store import datasets as dataset_store
from computenet.node.store import jobs as job_store
from computenet.node.store import pools as pool_store
from computenet.node.store import tenants as tenant_store
from computenet.transfer.paths import PathError, normalise

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[str, Path(pattern=r"^j-[0-9a-z]{1,40}$")]


def _request(spec: JobSpec) -> Capacity:
    r = spec.resources
    return Capacity(cpus=r.cpus, memory_bytes=r.memory, gpus=r.gpus)


def _view(spec: JobSpec, tenant: str, job_id: str = "j-new") -> JobView:
    return JobView(
        job_id,
        tenant,
        _request(spec),
        spec.pool,
        spec.priority,
        time.time(),
        time_limit=spec.resources.time,
        optimize=spec.optimize,
        regions=tuple(spec.regions),
        **device_wishes(spec.resources.accelerator, spec.resources.vendor, spec.resources.arch),
        variants=frozenset(spec.variants),
        inputs=tuple(i.uri for i in spec.inputs),
    )


def admit(
    conn: Connection,
    profile: Profile,
    tenant: str,
    specs: list[JobSpec],
    fields: list[str],
    own_code: str = "",
) -> None:
    """Refuses what no registered pool could ever run, or what the tenant's quota could never
    allow, naming the job it was."""
    policy = tenant_store.policies(conn).get(tenant)
    seen: set[str] = set()
    for spec, field in zip(specs, fields, strict=True):
        r = spec.resources
        if policy is not None and policy.max_cpus is not None and r.cpus > policy.max_cpus:
            raise Conflict(
                f"tenant {tenant} may hold at most {policy.max_cpus:g} CPUs",
                field=f"{field}resources.cpus",
            )
        if policy is not None and policy.max_gpus is not None and r.gpus > policy.max_gpus:
            raise Conflict(
                f"tenant {tenant} may hold at most {policy.max_gpus} GPUs",
                field=f"{field}resources.gpus",
            )
        key = spec.model_dump_json(include={"resources", "pool", "regions", "variants"})
        if key in seen or elsewhere(spec, own_code):
            continue  # another node's pool: its owner decides when the job gets there
        seen.add(key)
        why = ever_fits(conn, profile, _view(spec, tenant))
        if why is not None:
            where = "pool" if spec.pool else "regions" if spec.regions else "resources"
            raise Conflict(why, field=f"{field}{where}")


def pin_inputs(conn: Connection, spec: JobSpec, field: str = "") -> JobSpec:
    """Each dataset input names the version that was newest at submission: a version
    published while the job waits does not change what it reads."""
    if not spec.inputs:
        return spec
    pinned = []
    for i, item in enumerate(spec.inputs):
        uri, inside = split_input(item.uri)
        ref = parse_data_uri(uri)
        if isinstance(ref, DatasetRef):
            where = f"{field}inputs.{i}.uri"
            try:
                v = dataset_store.resolve(conn, ref, where)
            except NotFound as e:
                raise Invalid(e.detail, field=where) from e
            try:  # the version's name can take the URI past its length
                item = DataInput(uri=f"{v.uri}/{inside}" if inside else v.uri, path=item.path)
            except ValidationError as e:
                raise Invalid(f"pinned to {v.uri}, the input is too long", field=where) from e
        pinned.append(item)
    return spec.model_copy(update={"inputs": pinned})


def check_outputs(
    conn: Connection,
    spec: JobSpec,
    tenant: str,
    field: str = "",
    named: dict[str, str] | None = None,
) -> None:
    """Refuses at submission the dataset outputs that could only fail once the job has
    run: a version that exists, a name another tenant owns, one version named twice
    (``named`` carries what earlier jobs of a batch name)."""
    named = {} if named is None else named
    for i, item in enumerate(spec.outputs):
        ref = parse_data_uri(item.uri)
        if not isinstance(ref, DatasetRef):
            continue
        where = f"{field}outputs.{i}.uri"
        owner = dataset_store.owner(conn, ref.name)
        if owner is not None and owner != tenant:
            raise Forbidden(f"dataset {ref.name!r} belongs to tenant {owner}", field=where)
        if ref.version is None:
            continue
        if str(ref) in named:
            raise Invalid(f"{named[str(ref)]} is {ref} already", field=where)
        named[str(ref)] = where
        if (why := dataset_store.taken(conn, ref.name, ref.version)) is not None:
            raise Conflict(why, field=where)


def check_request(spec: JobSpec, node: Node, field: str = "") -> None:
    """Vendors narrow the accelerators asked for; with none asked, they would be ignored and
    the job would run without the device its author had in mind, and one neither the
    catalog nor any pool here knows is a typo. A goal is one this node weighs: the four
    built in, or one its scheduling file defines; a job for another node's pool takes
    only the four, which every node knows."""
    own_code = node.federation.code if node.federation.chain else ""
    goals = GOALS if elsewhere(spec, own_code) else node.profile.weights
    if spec.optimize is not None and spec.optimize not in goals:
        where = "another node's pool" if goals is GOALS else "this node"
        raise Invalid(
            f"no goal {spec.optimize!r} for {where}; it has {', '.join(sorted(goals))}",
            field=f"{field}optimize",
        )
    r = spec.resources
    if r.vendor and not r.gpus:
        raise Invalid(
            "vendor chooses among accelerators, and the job asks for none: "
            "ask for them with gpus or accelerator",
            field=f"{field}resources.vendor",
        )
    if r.vendor and node.index.entries and not elsewhere(spec, own_code):  # none yet: waits
        known = catalog_vendors() | {v for e in node.index.entries.values() for v in e.vendors}
        if unknown := [v for v in r.vendor if v not in known]:
            raise Invalid(
                f"no vendor {unknown[0]!r} in the catalog or among the pools here; "
                f"they have {', '.join(sorted(known))}",
                field=f"{field}resources.vendor",
            )


@functools.cache
def catalog_vendors() -> frozenset[str]:
    from computenet import catalog

    return frozenset(e.vendor.lower() for e in catalog.load().entries)


def check_pools(conn: Connection, spec: JobSpec, own_code: str = "", field: str = "") -> None:
    """Refuses at submission inputs that overlap either way, and a pool input or output on a pool this node has never had
    (wherever the job is to run): otherwise the job waits its turn only to fail at
    staging. A pool of another node of the tree is its node's to check."""
    pair = overlapping(spec.inputs)
    if pair is not None:
        raise Invalid(overlap_reason(spec.inputs, *pair), field=f"{field}inputs.{pair[1]}.path")
    items = [("inputs", i, x.uri) for i, x in enumerate(spec.inputs)]
    items += [("outputs", i, x.uri) for i, x in enumerate(spec.outputs)]
    for kind, i, uri in items:
        ref = parse_data_uri(split_input(uri)[0])
        if not isinstance(ref, PoolRef) or (
            own_code and not ref.pool.startswith(f"cpi:{own_code}:")
        ):
            continue
        where = f"{field}{kind}.{i}.uri"
        try:
            pool_store.get(conn, ref.pool)
        except NotFound:
            raise Invalid(
                f"no pool {ref.pool!r} on this node (`cnet resources` lists them)", field=where
            ) from None
        try:
            path = normalise(ref.path)
        except PathError as e:
            raise Invalid(str(e), field=where) from None
        if kind == "outputs":
            _keepable(conn, ref.pool, path, where)


def _keepable(conn: Connection, pool: str, path: str, field: str) -> None:
    """An output replaces everything at its path: never the pool's root, nor a path at
    or above a dataset's copy."""
    if not path:
        raise Invalid("an output replaces everything at its path: name one below the root", field)
    held = dataset_store.held_at(conn, pool, path)
    if held:
        raise Conflict(dataset_store.unwritable(*held[0]), field=field)


def elsewhere(spec: JobSpec, own_code: str) -> bool:
    return bool(own_code and spec.pool and not spec.pool.startswith(f"cpi:{own_code}:"))


async def _poolless(node: Node, spec: JobSpec, field: str = "") -> JobSpec:
    """``spec`` placed on a pool of the tree, where this node is in one and has no pools of
    its own: here it would wait for ever."""
    if not node.federation.chain or spec.pool or node.index.entries:
        return spec
    if spec.optimize is not None and spec.optimize not in GOALS:
        raise Invalid(
            f"goal {spec.optimize!r} is this node's own, and this node has no pools: its "
            f"jobs run elsewhere in the tree, where the goals are {', '.join(GOALS)}",
            field=f"{field}optimize",
        )
    far = await _in_the_tree(node, spec)
    if far is None:
        raise Conflict(
            "this node has no pools, and no pool in its tree can take the job now: "
            "submit it again later, or pin it to a pool with --pool",
            field=f"{field}resources",
        )
    return spec.model_copy(update={"pool": far})


async def _in_the_tree(node: Node, spec: JobSpec) -> str | None:
    """A pool elsewhere in the tree that can take the job now, for a job no pool here
    could ever run."""
    fed = node.federation
    if not fed.chain or spec.pool or (spec.optimize is not None and spec.optimize not in GOALS):
        return None  # a goal of this node's own does not travel
    r = spec.resources
    terms = [f"cpus>={r.cpus:g}", f"mem>={r.memory}", f"gpus>={r.gpus}"]
    if spec.regions:
        terms.append("region=" + ",".join(spec.regions))
    if r.gpus and r.vendor:  # the owner checks the rest (an accelerator grammar, variants)
        terms.append("vendor=" + ",".join(r.vendor))
    if r.gpus and r.arch:
        terms.append("arch=" + ",".join(r.arch))
    q = " ".join(terms)
    if fed.membership is not None and fed.membership.parent_url:
        r2 = await fed.call(
            "GET",
            fed.membership.parent_url,
            "/v1/discover",
            params={"q": q, "scope": "tree", "limit": 50},
        )
        items = r2.json().get("items", []) if r2.status_code == 200 else []
        cpis = [str(x["cpi"]) for x in items]
    else:
        page, _ = fed.tree_index_now().query(parse(q), None, False, 50)
        cpis = [x.cpi for x in page]
    return next((c for c in cpis if not c.startswith(f"cpi:{fed.code}:")), None)


@router.post("", status_code=201, response_model=Job)
async def submit(
    spec: JobSpec, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> Job:
    code = node.federation.code if node.federation.chain else ""
    check_request(spec, node)
    spec = await _poolless(node, spec)

    def run(spec: JobSpec) -> Job:
        with node.store.write() as conn:
            admit(conn, node.profile, who.tenant, [spec], [""], code)
            check_pools(conn, spec, code)  # this node's pools, wherever the job runs
            if not elsewhere(spec, code):  # else its pool's node checks them
                check_outputs(conn, spec, who.tenant)
                if not who.admin:
                    homes.check_job(conn, spec, who.tenant)
            return job_store.insert(conn, who.tenant, pin_inputs(conn, spec))

    try:
        job = await node.db(run, spec)
    except Conflict as e:
        if e.field not in ("resources", "regions"):
            raise
        far = await _in_the_tree(node, spec)
        if far is None:
            raise
        job = await node.db(run, spec.model_copy(update={"pool": far}))
    JOBS_SUBMITTED.labels(who.tenant).inc()
    node.events.schedule.set()
    return job


@router.post("/plan", response_model=Plan)
async def plan(
    spec: JobSpec, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> Plan:
    """The optimizer table for a job: candidates with estimated start, cost and score parts,
    the rejected pools with reasons, and what the scheduler would do. Nothing is submitted;
    an input submission would refuse (no such dataset) is refused here too, by field."""

    code = node.federation.code if node.federation.chain else ""
    check_request(spec, node)

    def run(conn: Connection) -> Plan:
        check_pools(conn, spec, code)
        if not elsewhere(spec, code):
            check_outputs(conn, spec, who.tenant)
            if not who.admin:
                homes.check_job(conn, spec, who.tenant)
        pinned = pin_inputs(conn, spec)  # as submission names its data: a version moves once
        return plan_job(conn, node.profile, _view(pinned, who.tenant, "j-plan"))

    return await node.reading(run)


@router.post("/batch", status_code=201, response_model=list[Job])
async def submit_batch(
    batch: JobBatch, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> list[Job]:
    """Up to 1,000 jobs in one transaction: all are accepted, or none."""
    code = node.federation.code if node.federation.chain else ""
    for i, s in enumerate(batch.jobs):
        check_request(s, node, f"jobs.{i}.")
    specs = [await _poolless(node, s, f"jobs.{i}.") for i, s in enumerate(batch.jobs)]
    batch = batch.model_copy(update={"jobs": specs})

    def run() -> list[Job]:
        with node.store.write() as conn:
            fields = [f"jobs.{i}." for i in range(len(batch.jobs))]
            admit(conn, node.profile, who.tenant, batch.jobs, fields, code)
            named: dict[str, str] = {}
            for s, f in zip(batch.jobs, fields, strict=True):
                check_pools(conn, s, code, f)
                if not elsewhere(s, code):
                    check_outputs(conn, s, who.tenant, f, named)
                    if not who.admin:
                        homes.check_job(conn, s, who.tenant, f)
            specs = [pin_inputs(conn, s, f) for s, f in zip(batch.jobs, fields, strict=True)]
            return job_store.insert_many(conn, who.tenant, specs)

    jobs = await node.db(run)
    JOBS_SUBMITTED.labels(who.tenant).inc(len(jobs))
    node.events.schedule.set()
    return jobs


@router.get("", response_model=JobPage)
async def list_jobs(
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
    state: Annotated[list[JobState] | None, Query()] = None,
    pool: Annotated[str | None, Query(max_length=255)] = None,
    name: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^j-[0-9a-z]{1,40}$")] = None,
    all_tenants: Annotated[bool, Query(alias="all")] = False,
) -> JobPage:
    if all_tenants and not who.admin:  # a tenant's own list would pass for everyone's
        raise Forbidden("listing every tenant's jobs needs the admin role", field="all")
    scope = who.scope if all_tenants else who.tenant
    return await node.reading(job_store.list_page, scope, state, pool, name, limit, cursor)


@router.get("/counts", response_model=dict[str, int])
async def counts(
    who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> dict[str, int]:
    return await node.reading(job_store.count_by_state, who.tenant)


@router.get("/{job_id}", response_model=Job)
async def get_job(
    job_id: JobId,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
    wait: Annotated[float, Query(ge=0, le=60, description="long-poll until terminal")] = 0,
) -> Job:
    deadline = time.monotonic() + wait
    while True:
        seen = node.events.jobs.version(job_id)
        job = await node.reading(job_store.get, job_id, who.scope)
        left = deadline - time.monotonic()
        if job.state.terminal or left <= 0 or node.events.closing.is_set():
            return job
        await node.events.jobs.wait(job_id, seen, min(left, 1.0))


@router.post("/{job_id}/cancel", response_model=Job)
async def cancel(
    job_id: JobId, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> Job:
    job = await node.writing(job_store.request_cancel, job_id, who.scope, time.time())
    if job.pool and not job.state.terminal:
        node.events.pools.notify(job.pool)
    node.events.jobs.notify(job_id)
    return job


@router.get("/{job_id}/logs")
async def logs(
    job_id: JobId,
    request: Request,
    who: Principal = Depends(principal),
    node: Node = Depends(node_of),
    follow: bool = False,
) -> StreamingResponse:
    """NDJSON, one ``{"attempt", "stream", "data"}`` object per chunk; with ``follow`` it ends
    when the job does."""
    await node.reading(job_store.get, job_id, who.scope)  # 404 for other tenants

    async def chunks() -> AsyncIterator[bytes]:
        after = 0
        while True:
            seen = node.events.jobs.version(job_id)
            batch = await node.reading(job_store.read_logs, job_id, after)
            for cid, attempt, stream, data in batch:
                after = cid
                line = {"attempt": attempt, "stream": stream, "data": data.decode(errors="replace")}
                yield (json.dumps(line) + "\n").encode()
            if batch:
                continue
            if not follow:
                return
            job = await node.reading(job_store.get, job_id, who.scope)
            if job.state.terminal:
                if not await node.reading(job_store.read_logs, job_id, after, 1):
                    return
                continue
            if node.events.closing.is_set() or await request.is_disconnected():
                return  # a client that follows asks again, of the node that serves next
            await node.events.jobs.wait(job_id, seen, 1.0)

    return StreamingResponse(chunks(), media_type="application/x-ndjson")
