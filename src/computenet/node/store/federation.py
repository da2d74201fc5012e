"""Children this node delegated codes to, and the one-time tokens they joined with."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import Connection, select, update

from computenet.model.federation import Delegation, Invite
from computenet.node.errors import Conflict, Unauthorized
from computenet.node.store.tables import children, invites

TOKEN_PREFIX = "cnj_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_invite(conn: Connection, code: str, ttl: float) -> Invite:
    taken = conn.execute(select(children.c.code).where(children.c.code == code)).first()
    if taken is not None:
        raise Conflict(f"node code {code} is taken already", field="label")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    conn.execute(
        invites.insert().values(
            token_hash=_hash(token), code=code, created_at=now, expires_at=now + ttl
        )
    )
    return Invite(code=code, token=token, expires_at=now + ttl)


def redeem(conn: Connection, token: str) -> str:
    """The code an invite grants; each token works once, and only before it expires."""
    now = time.time()
    row = conn.execute(
        update(invites)
        .where(
            invites.c.token_hash == _hash(token),
            invites.c.used_at.is_(None),
            invites.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(invites.c.code)
    ).first()
    if row is None:
        raise Unauthorized("join token unknown, used already, or expired", field="token")
    taken = conn.execute(select(children.c.code).where(children.c.code == row.code)).first()
    if taken is not None:
        raise Conflict(f"node code {row.code} is taken already", field="token")
    return str(row.code)


def add_child(conn: Connection, link: Delegation) -> None:
    conn.execute(
        children.insert().values(
            code=link.code,
            public_key=link.public_key,
            url=link.url,
            delegation=link.model_dump(mode="json"),
            joined_at=time.time(),
        )
    )


def list_children(conn: Connection) -> list[Delegation]:
    rows = conn.execute(select(children.c.delegation).order_by(children.c.code)).all()
    return [Delegation.model_validate(r.delegation) for r in rows]
