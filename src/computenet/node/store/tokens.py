"""API tokens: created with a secret that is shown once, stored as a hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import Connection, select, update

from computenet.model import Role, Token, TokenSecret
from computenet.node.errors import Conflict, NotFound, Unauthorized
from computenet.node.store import rows
from computenet.node.store.tables import tokens

PREFIX = "cnet_"


def _hash(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough; no password stretching needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def create(conn: Connection, name: str, tenant: str, role: Role) -> TokenSecret:
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = time.time()
    conn.execute(
        tokens.insert().values(
            id=token_id,
            name=name,
            tenant=tenant,
            role=role.value,
            secret_hash=_hash(secret),
            created_at=now,
        )
    )
    row = conn.execute(select(tokens).where(tokens.c.id == token_id)).one()
    return TokenSecret(**rows.token(row).model_dump(), secret=f"{PREFIX}{token_id}.{secret}")


def split(presented: str) -> tuple[str, str]:
    if not presented.startswith(PREFIX) or "." not in presented:
        raise Unauthorized("malformed token")
    token_id, _, secret = presented[len(PREFIX) :].partition(".")
    if not token_id or not secret or len(presented) > 200:
        raise Unauthorized("malformed token")
    return token_id, secret


def authenticate(conn: Connection, presented: str) -> Token:
    token_id, secret = split(presented)
    row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        raise Unauthorized("unknown token")
    if row.revoked_at is not None:
        raise Unauthorized("token revoked")
    return rows.token(row)


def list_all(conn: Connection, tenant: str | None = None) -> list[Token]:
    q = select(tokens).order_by(tokens.c.created_at)
    if tenant is not None:
        q = q.where(tokens.c.tenant == tenant)
    return [rows.token(r) for r in conn.execute(q).all()]


def revoke(conn: Connection, token_id: str) -> Token:
    """Revokes a token, but never the last live admin one: nothing could then make
    another, and a restart makes none while any token exists."""
    row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
    if row is None:
        raise NotFound(f"no token {token_id!r}", field="token_id")
    if row.role == Role.admin.value and row.revoked_at is None:
        # locked: two admins revoking each other at once would each see the other live
        live = select(tokens.c.id).where(
            tokens.c.role == Role.admin.value, tokens.c.revoked_at.is_(None)
        )
        if {r.id for r in conn.execute(live.with_for_update())} <= {token_id}:
            raise Conflict(
                f"{token_id} is the node's last admin token: create another first "
                "(cnet token create NAME --role admin)",
                field="token_id",
            )
    conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
        .values(revoked_at=time.time())
    )
    row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
    if row is None:
        raise NotFound(f"no token {token_id!r}", field="token_id")
    return rows.token(row)


def count(conn: Connection) -> int:
    return len(conn.execute(select(tokens.c.id)).all())


def revoked_since(conn: Connection, since: float) -> list[str]:
    """Tokens revoked at or after ``since``: what another replica may have done."""
    q = select(tokens.c.id).where(tokens.c.revoked_at >= since)
    return [str(r.id) for r in conn.execute(q)]
