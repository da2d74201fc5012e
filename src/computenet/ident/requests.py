"""Signed HTTP requests: how an agent proves, on every call, that it holds its pool's key.

The signature covers method, path with query, a timestamp and the body's SHA-256, so it
cannot be moved to another request; the node accepts it only within a short window.
Heartbeats carry a sequence number too, which closes the window for them entirely.
"""

from __future__ import annotations

import hashlib
import math
import time

from computenet.ident.keys import KeyPair, SignatureError, verify

HEADER_POOL = "X-CNet-Pool"
HEADER_NODE = "X-CNet-Node"  # instead of the pool header, on calls between nodes
HEADER_TIME = "X-CNet-Time"
HEADER_SIGNATURE = "X-CNet-Signature"
WINDOW = 300.0


def message(method: str, target: str, timestamp: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{digest}".encode()


def sign(
    key: KeyPair, pool: str, method: str, target: str, body: bytes, header: str = HEADER_POOL
) -> dict[str, str]:
    stamp = f"{time.time():.3f}"
    return {
        header: pool,
        HEADER_TIME: stamp,
        HEADER_SIGNATURE: key.sign(message(method, target, stamp, body)),
    }


def check(public_key: str, method: str, target: str, stamp: str, body: bytes, sig: str) -> None:
    """Raises ``SignatureError`` (a ValueError) when the request is not what the key signed."""
    try:
        when = float(stamp)
    except ValueError as e:
        raise SignatureError("bad timestamp") from e
    if not math.isfinite(when) or abs(time.time() - when) > WINDOW:
        raise SignatureError("timestamp outside the accepted window; check the clock")
    verify(public_key, message(method, target, stamp, body), sig)
