"""Transfer tickets: the node signs what one client may move, the data server checks it.

A ticket binds a pool, a path prefix, a direction, a byte limit and an expiry. It is
signed over its canonical JSON with the node's Ed25519 key, so any data server that knows
the node's public key can check it without asking the node.
"""

from __future__ import annotations

import secrets
import time

from computenet.ident.keys import KeyPair, SignatureError, verify_json
from computenet.model.transfer import DataEndpoint, Direction, Ticket, TicketClaims
from computenet.transfer.paths import PathError, normalise, within
from computenet.transfer.wire import TransferError


class TicketError(TransferError):
    """A ticket that does not allow what is asked; the message says which check failed."""


class BadSignature(TicketError):
    """Not signed by the key the server knows: forged, or the node has a new key."""


def new_id() -> str:
    return f"t-{secrets.token_hex(8)}"


def _signed(claims: TicketClaims) -> dict[str, object]:
    """What the signature covers: a claim left out (None) is not there at all, so a
    ticket without one reads the same to a node and a data server of any release."""
    return claims.model_dump(mode="json", exclude_none=True)


def address(endpoint: DataEndpoint) -> str:
    """How a ticket names the data server it is for."""
    return f"{endpoint.host}:{endpoint.port}"


def issue(key: KeyPair, claims: TicketClaims) -> Ticket:
    return Ticket(claims=claims, signature=key.sign_json(_signed(claims)))


def check(
    ticket: Ticket,
    node_key: str,
    *,
    pool: str,
    direction: Direction,
    path: str,
    size: int = 0,
    now: float | None = None,
) -> str:
    """Returns the normalised path the ticket allows, or raises ``TicketError``."""
    c = ticket.claims
    try:
        verify_json(node_key, _signed(c), ticket.signature)
    except SignatureError as e:
        raise BadSignature(f"ticket {c.id} is not signed by the node: {e}") from e
    if (now if now is not None else time.time()) >= c.expires_at:
        raise TicketError(f"ticket {c.id} has expired")
    if c.pool != pool:
        raise TicketError(f"ticket {c.id} is for pool {c.pool}, not {pool}")
    if c.direction is not direction:
        raise TicketError(f"ticket {c.id} allows {c.direction.value}, not {direction.value}")
    try:
        want = normalise(path)
    except PathError as e:
        raise TicketError(str(e)) from e
    if not within(c.path, want):
        raise TicketError(f"ticket {c.id} is for /{c.path}, not /{want}")
    if size > c.max_bytes:
        raise TicketError(f"ticket {c.id} allows {c.max_bytes} bytes, not {size}")
    return want
