"""Transfer tickets: the node checks who asks and for what, then signs; bytes never pass here.

``POST /v1/transfers`` grants a ticket for one pool path and one direction, with a byte
limit and an expiry, and says where the pool's data server listens. ``GET
/v1/transfers/key`` is the node's public key, which data servers check tickets against.
"""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Depends

from computenet.model import Model, PoolStatus
from computenet.model.common import format_apart
from computenet.model.transfer import (
    Direction,
    Link,
    TicketClaims,
    TransferGrant,
    TransferRequest,
)
from computenet.node import homes
from computenet.node.auth import Principal, node_of, principal
from computenet.node.errors import Conflict, Invalid, TooLarge
from computenet.node.runtime import Node
from computenet.node.store import datasets as dataset_store
from computenet.node.store import links as link_store
from computenet.node.store import pools as pool_store
from computenet.node.store import tenants as tenant_store
from computenet.transfer import ticket as tickets
from computenet.transfer.paths import PathError, normalise, within, writable_name

router = APIRouter(prefix="/v1", tags=["transfers"])
MAX_TRANSFER = int(os.environ.get("CNET_MAX_TRANSFER", str(1 << 40)))
DELETE_TTL = 60.0  # a delete ticket is checked against datasets' copies only when granted


class NodeKey(Model):
    public_key: str
    issuer: str


@router.get("/transfers/key", response_model=NodeKey)
async def key(node: Node = Depends(node_of)) -> NodeKey:
    """Public: a signature check needs no secret."""
    return NodeKey(public_key=node.federation.key.public_key, issuer=node.federation.code)


@router.get("/links", response_model=list[Link])
async def links(_: Principal = Depends(principal), node: Node = Depends(node_of)) -> list[Link]:
    """The links between pools as the node has measured them: what data locality counts."""
    return await node.reading(link_store.list_all)


@router.post("/transfers", status_code=201, response_model=TransferGrant)
async def grant(
    body: TransferRequest, who: Principal = Depends(principal), node: Node = Depends(node_of)
) -> TransferGrant:
    return await issue(node, who.tenant, body, confined=not who.admin)


async def issue(
    node: Node, tenant: str, body: TransferRequest, field: str = "", confined: bool = False
) -> TransferGrant:
    """A ticket for ``tenant``, held to the tenant's reach when ``confined``; also what
    agents get to stage a job's data, whose paths were checked when it was submitted
    (``field`` prefixes the fields a refusal names)."""
    try:
        path = normalise(body.path)
        if body.direction is Direction.put:
            writable_name(path)
    except PathError as e:
        raise Invalid(str(e), field=f"{field}path") from e
    if confined:
        await node.reading(homes.check, tenant, body.pool, path, body.direction, f"{field}path")
    if body.size > MAX_TRANSFER:
        size, limit = format_apart(body.size, MAX_TRANSFER)
        raise TooLarge(f"{size} is over this node's limit of {limit} for one copy", f"{field}size")
    pool = await node.reading(pool_store.get, body.pool)
    if body.direction is Direction.delete:
        await _removable(node, pool.cpi, path, field)
    elif body.direction is Direction.put:
        await writable(node, pool.cpi, path, f"{field}path")
    if pool.data is None:
        raise Conflict(f"pool {pool.cpi} has no data server", field=f"{field}pool")
    if pool.status is PoolStatus.offline:
        raise Conflict(f"pool {pool.cpi} is offline", field=f"{field}pool")
    claims = TicketClaims(
        id=tickets.new_id(),
        pool=pool.cpi,
        path=path,
        direction=body.direction,
        max_bytes={Direction.put: body.size, Direction.get: MAX_TRANSFER}.get(body.direction, 0),
        expires_at=time.time()
        + (min(body.ttl, DELETE_TTL) if body.direction is Direction.delete else body.ttl),
        tenant=tenant,
        issuer=node.federation.code,
        home_quota=await home_quota(node, tenant, path, body.direction),
        endpoint=tickets.address(pool.data),
    )
    return TransferGrant(
        ticket=tickets.issue(node.federation.key, claims), endpoint=pool.data, path="/" + path
    )


async def home_quota(node: Node, tenant: str, path: str, way: Direction) -> int | None:
    """A put into the tenant's own home carries its data quota, which the pool's data
    server holds the home to; a job's output into it too, since it goes the same way."""
    if way is not Direction.put or not within(homes.home(tenant).strip("/"), path):
        return None
    return await node.reading(tenant_store.max_data, tenant)


async def writable(
    node: Node, pool: str, path: str, field: str = "path", whole: bool = False
) -> None:
    """Refuses a write at or inside a dataset's copy, and with ``whole`` (a write that
    replaces everything at ``path``) one above a copy too. Versions never change, and jobs
    are staged from a pool's copy by hard links. A put above
    a copy is checked again by the data server, file by file, against the copies there
    are when it starts and when it commits."""
    for name, version, where in await node.reading(dataset_store.held_at, pool, path):
        if whole or within(where, path):
            raise Conflict(dataset_store.unwritable(name, version, where), field=field)


async def _removable(node: Node, pool: str, path: str, field: str) -> None:
    """A delete ticket is never for the whole data root, nor for a dataset's copy: the
    node would go on sending jobs to a copy that is gone."""
    if not path:
        raise Invalid("the data root itself cannot be removed", field=f"{field}path")
    held = await node.reading(dataset_store.held_at, pool, path)
    if held:
        name, version, where = held[0]
        raise Conflict(
            f"/{where} holds dataset {name}@{version}: `cnet dataset rm {name}@{version}` "
            "removes a version and its copies",
            field=f"{field}path",
        )
