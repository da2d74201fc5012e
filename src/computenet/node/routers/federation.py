"""The hierarchy's API: invites and joins, summaries from children, resolution, the tree."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Connection

from computenet.ident.delegation import issue
from computenet.ident.keys import SignatureError, verify_json
from computenet.model.federation import (
    Delegation,
    Invite,
    InviteCreate,
    JoinAnswer,
    JoinRequest,
    Resolution,
    Summary,
    TreeView,
)
from computenet.node.auth import Principal, admin, caller, node_of, signed_node
from computenet.node.errors import Unauthorized
from computenet.node.runtime import Node
from computenet.node.store import federation as fed_store

router = APIRouter(prefix="/v1", tags=["federation"])
JOIN_WINDOW = 300.0


@router.get("/resolve/{cpi:path}", response_model=Resolution)
async def resolve(
    cpi: str, _: Annotated[object, Depends(caller)], node: Node = Depends(node_of)
) -> Resolution:
    """The record a CPI names, from whichever node in the tree owns its prefix, with the
    owner's signature and delegation chain, and the nodes consulted on the way."""
    return await node.federation.resolve(cpi)


@router.get("/federation/tree", response_model=TreeView)
async def tree(_: Annotated[object, Depends(caller)], node: Node = Depends(node_of)) -> TreeView:
    return node.federation.tree()


@router.get("/federation/chain", response_model=list[Delegation])
async def chain(node: Node = Depends(node_of)) -> list[Delegation]:
    """Public: this node's delegation chain, from the root down."""
    node.federation.require_tree()
    return node.federation.chain


@router.post("/federation/invites", status_code=201, response_model=Invite)
async def invite(
    body: InviteCreate, _: Principal = Depends(admin), node: Node = Depends(node_of)
) -> Invite:
    """A one-time token for a child node to join under ``<this code>.<label>``."""
    fed = node.federation
    fed.require_tree()
    return await node.writing(fed_store.create_invite, f"{fed.code}.{body.label}", body.ttl)


@router.post("/federation/join", status_code=201, response_model=JoinAnswer)
async def join(body: JoinRequest, node: Node = Depends(node_of)) -> JoinAnswer:
    """The invite's token is the credential; the request is signed by the joining node's
    key, which the delegation then names."""
    fed = node.federation
    fed.require_tree()
    if abs(time.time() - body.signed_at) > JOIN_WINDOW:
        raise Unauthorized("join request timestamp outside the accepted window", field="signed_at")
    try:
        verify_json(body.public_key, body.payload(), body.signature)
    except SignatureError as e:
        raise Unauthorized(f"join request not signed by its key: {e}", field="signature") from e

    def run(conn: Connection) -> Delegation:
        code = fed_store.redeem(conn, body.token)
        link = issue(fed.key, fed.code, code, body.public_key, body.url)
        fed_store.add_child(conn, link)
        return link

    link = await node.writing(run)
    fed.children[link.code] = link
    return JoinAnswer(chain=[*fed.chain, link])


@router.post("/federation/summaries", status_code=204)
async def summaries(body: Summary, request: Request, sender: str = Depends(signed_node)) -> None:
    node_of(request).federation.accept_summary(sender, body)
