"""Who is asking: bearer tokens for people and tools, signatures for agents."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from computenet.ident import requests as signed
from computenet.ident.keys import SignatureError
from computenet.model import Role, Token
from computenet.node.errors import Forbidden, Unauthorized
from computenet.node.runtime import Node


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
    if key is None:
        raise Unauthorized(f"unknown pool {pool!r}; register it first", field="pool")
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    target = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    try:
        signed.check(key, request.method, target, stamp, await request.body(), sig)
    except SignatureError as e:
        raise Unauthorized(f"bad pool signature: {e}") from e
    return pool
