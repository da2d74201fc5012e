"""``cnet cp`` and ``Client.copy``: what each side names, which ticket to ask for, which way.

A side is a local path or a pool path, ``POOL-CPI:/path`` (``cpi:local:acme/gpu-a:/in``).
A path ending in ``/`` names a directory: a file copied there keeps its name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from computenet.ident.cpi import CPIError, parse
from computenet.model.transfer import Direction, TransferGrant, TransferRequest, TransferResult
from computenet.transfer import client
from computenet.transfer.client import Options
from computenet.transfer.manifest import total_size
from computenet.transfer.wire import TransferError

Grant = Callable[[TransferRequest], Awaitable[TransferGrant]]


@dataclass(frozen=True)
class Location:
    pool: str | None  # None: a local path
    path: str


def location(text: str) -> Location:
    if text.startswith("cnet://"):
        raise TransferError(f"{text}: datasets are not available yet; name a pool path")
    if not text.startswith("cpi:"):
        if not text:
            raise TransferError("an empty path names nothing")
        return Location(None, text)
    authority, _, rest = text[4:].partition(":")
    cpi_path, sep, path = rest.partition(":")
    cpi = f"cpi:{authority}:{cpi_path}"
    try:
        parsed = parse(cpi)
    except CPIError as e:
        raise TransferError(f"{text}: {e}") from e
    if not sep or parsed.kind != "pool":
        raise TransferError(f"{text}: a pool path is POOL-CPI:/path, e.g. cpi:local:acme/gpu:/in")
    return Location(cpi, path or "/")


async def copy(src: str, dst: str, grant: Grant, options: Options | None = None) -> TransferResult:
    options = options or Options()
    s, d = location(src), location(dst)
    ttl = max(600.0, options.deadline or 0.0)
    if s.pool is None and d.pool is not None:
        local = Path(s.path)
        if not local.exists():
            raise TransferError(f"{local}: no such file or directory")
        remote = d.path + local.name if d.path.endswith("/") and local.is_file() else d.path
        size = await asyncio.to_thread(total_size, local)
        g = await grant(
            TransferRequest(pool=d.pool, path=remote, direction=Direction.put, size=size, ttl=ttl)
        )
        return await client.put(g, local, options)
    if s.pool is not None and d.pool is None:
        g = await grant(TransferRequest(pool=s.pool, path=s.path, direction=Direction.get, ttl=ttl))
        return await client.get(g, Path(d.path), options)
    if s.pool is None or d.pool is None:
        raise TransferError("both sides are local paths: one side must be a pool path")
    to_pool = d.pool

    async def destination(size: int, single: bool) -> TransferGrant:
        name = s.path.rstrip("/").rsplit("/", 1)[-1]
        remote = d.path + name if d.path.endswith("/") and single else d.path
        req = TransferRequest(
            pool=to_pool, path=remote, direction=Direction.put, size=size, ttl=ttl
        )
        return await grant(req)

    g = await grant(TransferRequest(pool=s.pool, path=s.path, direction=Direction.get, ttl=ttl))
    return await client.relay(g, destination, options)
