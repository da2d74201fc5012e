"""Who is asking: bearer tokens for people and tools, signatures for agents."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Request

from computenet.ident import requests as signed
from computenet.ident.keys import SignatureError
from computenet.model import Role, Token
from computenet.node.errors import Forbidden, Unauthorized
from computenet.node.federation import HEADER_CHAIN, HEADER_TENANT
from computenet.node.runtime import Node
from computenet.node.store import tokens as token_store


@dataclass(frozen=True)
class Principal:
    token: Token

    @property
    def tenant(self) -> str:
        return self.token.tenant

    @property
    def admin(self) -> bool:
        return self.token.role is Role.admin

    @property
    def scope(self) -> str | None:
        """The tenant filter for reads: the operator sees every tenant's jobs."""
        return None if self.admin else self.token.tenant

    def require(self, *roles: Role) -> None:
        if self.token.role not in roles and not self.admin:
            raise Forbidden(f"this needs the {' or '.join(r.value for r in roles)} role")


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def principal(request: Request) -> Principal:
    if signed.HEADER_NODE in request.headers and HEADER_CHAIN in request.headers:
        return await _far_node(request)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        raise Unauthorized("missing bearer token; pass 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return Principal(await node_of(request).authenticate(value.strip()))


async def admin(request: Request) -> Principal:
    p = await principal(request)
    if not p.admin:
        raise Forbidden("this needs the admin role")
    return p


async def signed_pool(request: Request) -> str:
    """The pool CPI whose key signed this request, or a 401."""
    h = request.headers
    pool = h.get(signed.HEADER_POOL)
    stamp = h.get(signed.HEADER_TIME)
    sig = h.get(signed.HEADER_SIGNATURE)
    if not pool or not stamp or not sig:
        raise Unauthorized("unsigned request: agent calls must carry a pool signature")
    path_pool = request.path_params.get("pool")
    if path_pool is not None and path_pool != pool:
        raise Unauthorized("signed for another pool", field="pool")
    node = node_of(request)
    key = await node.pool_key(pool)
    if key is None:  # none, or the token it registered with is revoked
        raise Unauthorized(
            f"pool {pool!r} is not registered, or the token it registered with is revoked; "
            "register it again",
            field="pool",
        )
    await _check_signature(request, key, stamp, sig, "pool")
    return pool


async def signed_node(request: Request) -> str:
    """The code of the neighbouring node (parent or child) whose key signed this request."""
    h = request.headers
    code, stamp, sig = (
        h.get(signed.HEADER_NODE),
        h.get(signed.HEADER_TIME),
        h.get(signed.HEADER_SIGNATURE),
    )
    if not code or not stamp or not sig:
        raise Unauthorized("unsigned request: calls between nodes carry a node signature")
    key = node_of(request).federation.neighbour_key(code)
    if key is None:
        raise Unauthorized(f"node {code!r} is neither this node's parent nor a child")
    await _check_signature(request, key, stamp, sig, "node")
    return code


async def _check_signature(request: Request, key: str, stamp: str, sig: str, who: str) -> None:
    """Over exactly what was sent: the raw path and query, and the body."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    target = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    try:
        signed.check(key, request.method, target, stamp, await request.body(), sig)
    except SignatureError as e:
        raise Unauthorized(f"bad {who} signature: {e}") from e


async def _far_node(request: Request) -> Principal:
    """Another node of the tree, acting for one of its tenants (a forwarded job): it
    proves its code with its delegation chain, and the request with its key."""
    h = request.headers
    code, stamp, sig = (
        h.get(signed.HEADER_NODE, ""),
        h.get(signed.HEADER_TIME),
        h.get(signed.HEADER_SIGNATURE),
    )
    if not stamp or not sig:
        raise Unauthorized("unsigned request: calls between nodes carry a node signature")
    node = node_of(request)
    key, tenant = node.federation.far_caller(
        code, h.get(HEADER_CHAIN, ""), h.get(HEADER_TENANT, "")
    )
    await _check_signature(request, key, stamp, sig, "node")
    if any(t.revoked_at is None for t in await node.reading(token_store.list_all, tenant)):
        raise Forbidden(
            f"tenant {tenant} of node {code} is also a local tenant of this node (made before "
            "local tenants' names lost their dots): its admin must revoke those tokens"
        )
    now = datetime.now(UTC)
    return Principal(
        Token(id=f"node-{code}", name=code, tenant=tenant, role=Role.tenant, created_at=now)
    )


async def caller(request: Request) -> Principal | str:
    """A user's token, or a neighbouring node's signature."""
    if signed.HEADER_NODE in request.headers:
        return await signed_node(request)
    return await principal(request)
