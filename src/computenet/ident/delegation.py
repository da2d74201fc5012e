"""Delegation chains: how a node proves which code it holds, from the root down.

Each link is signed by the key of the link above it; the root's link by its own key. A
verifier that trusts the root's key checks every link in order, so a node can mint CPIs
only under a code that was really delegated to it, and any node can check a record from
any other node in the tree without asking anyone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from computenet.ident.cpi import CPIError, parse
from computenet.ident.keys import KeyPair, SignatureError, verify_json
from computenet.model.federation import Delegation, Record

CLOCK_SKEW = 300.0
DEFAULT_TTL = 10 * 365 * 86400.0


class ChainError(ValueError):
    """A delegation chain or record that does not verify; the message says where."""


def issue(
    issuer: KeyPair,
    issuer_code: str | None,
    code: str,
    public_key: str,
    url: str,
    ttl: float = DEFAULT_TTL,
) -> Delegation:
    now = time.time()
    fields = {
        "code": code,
        "public_key": public_key,
        "url": url,
        "issuer": issuer_code,
        "issued_at": now,
        "expires_at": now + ttl,
    }
    return Delegation.model_validate({**fields, "signature": issuer.sign_json(fields)})


def root(key: KeyPair, code: str, url: str) -> Delegation:
    return issue(key, None, code, key.public_key, url)


def child_code(parent: str, label: str) -> str:
    return f"{parent}.{label}"


def verify_chain(chain: Sequence[Delegation], trusted_root: str | None = None) -> Delegation:
    """The last link, once every link verifies; ``trusted_root`` is the root key to
    accept (``None``: whatever key the chain's root link signed itself with)."""
    if not chain:
        raise ChainError("empty delegation chain")
    now = time.time()
    first = chain[0]
    if first.issuer is not None:
        raise ChainError(f"the chain starts at {first.code}, which is not a root")
    if trusted_root is not None and first.public_key != trusted_root:
        raise ChainError(f"the chain's root {first.code} is not the root this node trusts")
    above: Delegation | None = None
    for link in chain:
        signer = first.public_key if above is None else above.public_key
        if above is not None:
            if link.issuer != above.code:
                raise ChainError(f"{link.code} claims issuer {link.issuer}, not {above.code}")
            parent, _, label = link.code.rpartition(".")
            if parent != above.code or not label:
                raise ChainError(f"{above.code} cannot delegate {link.code}: not one level below")
        if link.issued_at > now + CLOCK_SKEW:
            raise ChainError(f"the delegation of {link.code} is issued in the future")
        if link.expires_at < now:
            raise ChainError(f"the delegation of {link.code} expired")
        try:
            verify_json(signer, link.payload(), link.signature)
        except SignatureError as e:
            raise ChainError(f"the delegation of {link.code} is not signed by its issuer") from e
        above = link
    assert above is not None
    return above


def verify_record(record: Record, signature: str, chain: Sequence[Delegation], root: str) -> None:
    """A record verifies when its owner's chain does, the owner signed it, and the CPI it
    names lies under the owner's code (no node speaks for another's prefix)."""
    owner = verify_chain(chain, root)
    if record.owner != owner.code:
        raise ChainError(f"record says owner {record.owner}, but the chain is {owner.code}'s")
    try:
        authority = parse(record.cpi).authority
    except CPIError as e:
        raise ChainError(f"record for a malformed CPI: {e}") from e
    if authority != owner.code:
        raise ChainError(f"{owner.code} may not state a record for {record.cpi}")
    try:
        verify_json(owner.public_key, record.model_dump(mode="json"), signature)
    except SignatureError as e:
        raise ChainError(f"the record for {record.cpi} is not signed by {owner.code}") from e


def sign_record(key: KeyPair, record: Record) -> str:
    return key.sign_json(record.model_dump(mode="json"))
