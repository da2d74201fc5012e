"""Discovery: which pools can take what, now, from the live index; and as a stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from computenet.model.discovery import DiscoverPage
from computenet.node.auth import Principal, caller, node_of, principal
from computenet.node.errors import Conflict
from computenet.node.federation import Federation
from computenet.node.query import parse, parse_order
from computenet.node.runtime import Node

router = APIRouter(prefix="/v1/discover", tags=["discovery"])
KEEPALIVE = 15.0


@router.get("", response_model=DiscoverPage)
async def discover(
    q: Annotated[
        str, Query(max_length=2000, description="e.g. gpu>=2 mem>=40G region=cn-east")
    ] = "",
    order: Annotated[str | None, Query(max_length=32, description="price, -scu, cpus, ...")] = None,
    all_pools: Annotated[
        bool, Query(alias="all", description="include suspect and offline")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    scope: Annotated[
        Literal["local", "tree"], Query(description="tree: every node's pools in the hierarchy")
    ] = "local",
    _: Principal | str = Depends(caller),
    node: Node = Depends(node_of),
) -> DiscoverPage:
    start = time.perf_counter()
    query = parse(q)
    index = node.index
    if scope == "tree":
        fed = node.federation
        if fed.membership is not None and fed.membership.parent_url:
            return await _from_parent(fed, q, order, all_pools, limit)
        index = fed.tree_index_now()
    items, total = index.query(query, parse_order(order) if order else None, all_pools, limit)
    took = (time.perf_counter() - start) * 1000
    return DiscoverPage(items=items, total=total, took_ms=round(took, 3))


async def _from_parent(
    fed: Federation, q: str, order: str | None, all_pools: bool, limit: int
) -> DiscoverPage:
    """The root sees the whole tree: a node below it passes the question up."""
    assert fed.membership is not None and fed.membership.parent_url
    params = {"q": q, "limit": limit, "scope": "tree", **({"order": order} if order else {})}
    if all_pools:
        params["all"] = "true"
    try:
        r = await fed.call("GET", fed.membership.parent_url, "/v1/discover", params=params)
    except httpx.HTTPError as e:
        raise Conflict(f"the parent node does not answer: {e}") from e
    if r.status_code != 200:
        raise Conflict(f"the parent node answered {r.status_code}: {r.text[:200]}")
    return DiscoverPage.model_validate(r.json())


@router.get("/stream")
async def stream(
    request: Request,
    q: Annotated[str, Query(max_length=2000)] = "",
    all_pools: Annotated[
        bool, Query(alias="all", description="include suspect and offline")
    ] = False,
    _: Principal = Depends(principal),
    node: Node = Depends(node_of),
) -> StreamingResponse:
    """Server-sent events: every matching pool first, then each change as it happens.

    A pool that stops matching (it went offline, or its capacity was taken) is sent once
    more with its new state, so that a subscriber sees capacity vanish as well as appear.
    The first listing shows what ``GET /v1/discover`` would, with the same ``all``.
    """
    query = parse(q)
    sub = node.index.subscribe(query, all_pools)

    async def events() -> AsyncIterator[bytes]:
        said = time.monotonic()
        try:
            while not node.events.closing.is_set():  # a busy stream ends as the node stops
                try:
                    item = await asyncio.wait_for(sub.queue.get(), 1.0)
                except TimeoutError:
                    if node.events.closing.is_set() or await request.is_disconnected():
                        return
                    if time.monotonic() - said >= KEEPALIVE:
                        said = time.monotonic()
                        yield b": keepalive\n\n"
                    continue
                if item is None:
                    yield b"event: overflow\ndata: {}\n\n"
                    return
                yield b"event: pool\ndata: " + item.model_dump_json().encode() + b"\n\n"
        finally:
            node.index.unsubscribe(sub)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
