"""A cap on what a pool's data root holds, set by the pool's operator, and on what a
tenant's home holds in it, set by the node's admin: checked before a put's bytes flow.

What the root holds is measured by walking it (partial files count: they take the
space) at most once a minute; in between, each admitted put adds what it will add, so
that two puts at once cannot both take the last free bytes. Files that reach the root
by other ways (a job's outputs moved in) are seen at the next walk.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from pathlib import Path

from computenet.model.common import format_apart, format_bytes
from computenet.transfer.paths import files_under
from computenet.transfer.wire import TransferError

STALE = 60.0  # seconds a walk of the root stands for


class QuotaExceeded(TransferError):
    """A put that would take the data root past its quota."""


def fits(where: Path, total: int, entries: int, what: str) -> None:
    """Refuses a copy the file system at ``where`` cannot hold: its bytes, and its files
    and directories, since inodes run out long before bytes for a tree of small files,
    and then every writer on that disk fails midway."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if total > free:
        asked, has = format_apart(total, free)
        raise TransferError(f"not enough space in {what}: {asked} asked, {has} free")
    room = st.f_favail - 1  # a data server's record of the copy takes one
    # f_files is 0 where inodes are made as needed (btrfs): none run out
    if st.f_files and entries and entries > room:
        raise TransferError(
            f"not enough inodes in {what}: the copy makes {entries:,} files and "
            f"directories, and {max(0, room):,} more fit"
        )


def held(root: Path, also: Path | None = None) -> int:
    """Bytes of every regular file under ``root``, the data server's own aside, and under
    ``also``, one of its folders that peers fill."""
    n = sum(st.st_size for _, st in files_under(root))
    if also is not None:
        with contextlib.suppress(FileNotFoundError), os.scandir(also) as entries:
            for e in entries:
                with contextlib.suppress(FileNotFoundError):  # replaced meanwhile
                    n += e.stat(follow_symlinks=False).st_size if e.is_file() else 0
    return n


class Quota:
    """What the root held at the last walk, what admitted puts have added since, and what
    puts still moving have claimed. A walk sees a moving put's partial files as well as
    its claim: counted twice, which errs on the side of the cap."""

    def __init__(
        self,
        root: Path,
        limit: int | None,
        what: str = "the pool's data",
        also: Path | None = None,
    ) -> None:
        """``also``: a folder of the server's own that counts too (the puts' records,
        which a put's manifest sizes)."""
        self.root, self.limit, self.what, self.also = root, limit, what, also
        self.walked = 0  # bytes under the root at the last walk
        self.since = 0  # bytes that puts committed after it began
        self.open = 0  # bytes claimed by puts still moving
        self._at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def used(self) -> int:
        return self.walked + self.since + self.open

    async def claim(self, n: int, limit: int | None = None) -> None:
        """Takes ``n`` more bytes, or refuses, naming the quota (``limit`` where given, as
        a ticket states it) and what is left of it."""
        await self.check(n, limit, take=True)

    async def check(self, n: int, limit: int | None = None, take: bool = False) -> None:
        """Refuses ``n`` more bytes as ``claim`` would, taking them only with ``take``: a
        client asks before it spends minutes hashing a source that could never fit."""
        limit = self.limit if limit is None else limit
        if limit is None or n <= 0:
            return
        async with self._lock:
            if time.monotonic() - self._at > STALE:
                before = self.since
                self.walked = await asyncio.to_thread(held, self.root, self.also)
                self.since -= before  # what the walk counted; later commits stay
                self._at = time.monotonic()
            if self.used + n > limit:
                needs, left = format_apart(n, max(0, limit - self.used))
                raise QuotaExceeded(
                    f"{self.what} quota is {format_bytes(limit)} and it holds "
                    f"{format_bytes(self.used)} (unfinished copies included): this copy "
                    f"needs {needs}, with {left} left"
                )
            if take:
                self.open += n

    def settle(self, n: int, landed: bool, written: int = 0) -> None:
        """Ends a claim: its bytes are in the root now (``landed``), or ``written`` of
        them are, in partial files kept for a rerun to resume."""
        if self.limit is None or n <= 0:
            return
        self.open -= n
        self.since += n if landed else min(n, written)

    def changed(self) -> None:
        """Files left the root: the next claim walks it again. Subtracting what a removal
        freed could count it twice, when a walk running meanwhile has already missed it."""
        self._at = -math.inf
