"""Chunk hashes a data server has already computed, kept while their file is unchanged.

A pool's files are sent again and again (a dataset to every pool that runs on it, a
retried copy), and hashing the source is a quarter of a local copy's time. A file is the
same file while its device, inode, size, mtime and ctime are: the kernel sets ctime on
every change, and no call can set it back. A file changed less than ``RACY`` before it
was hashed is not kept, since a write in the same clock tick would leave its stamp as it
was. One change escapes the stamp: a write through a shared mapping on a filesystem that
does not update the times for it (tmpfs). Such a stale hash is caught where chunks are
verified (the default): the receiver refuses the chunk and the server forgets the file's
hashes. A copy with verify off, or one that compares checksums to skip files, trusts it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

RACY = 1_000_000_000  # ns
Stamp = tuple[int, int, int, int, int]


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """Least recently used first out, up to ``limit`` chunk hashes in all, each kept as
    its 32 raw bytes. The stamps it compares must come from ``fstat`` of a descriptor
    opened just before: on NFS an open revalidates a file's attributes, a bare ``stat``
    may answer from a cache a minute old."""

    def __init__(self, limit: int = 1 << 20, ctime: bool = True) -> None:
        self.limit = limit
        self.ctime = ctime  # False: a new hard link (which sets ctime) keeps the hashes
        self._lock = threading.Lock()
        self._files: OrderedDict[tuple[str, int], tuple[Stamp, bytes]] = OrderedDict()
        self._held = 0
        self.hits = 0
        self.misses = 0

    def get(self, path: str | Path, st: os.stat_result, chunk: int) -> list[str] | None:
        key = (str(path), chunk)
        with self._lock:
            got = self._files.get(key)
            if got is None or got[0] != self._stamp(st):
                self.misses += 1
                return None
            self._files.move_to_end(key)
            self.hits += 1
            raw = got[1]
        return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]

    def put(
        self,
        path: str | Path,
        before: os.stat_result,
        after: os.stat_result,
        chunk: int,
        hashes: list[str],
    ) -> None:
        """Keeps ``hashes``, read from ``path`` between the two stamps, if the file did
        not change in between nor just before."""
        changed = max(after.st_mtime_ns, after.st_ctime_ns if self.ctime else 0)
        if self._stamp(after) != self._stamp(before) or time.time_ns() - changed < RACY:
            return
        raw = bytes.fromhex("".join(hashes))
        key = (str(path), chunk)
        with self._lock:
            old = self._files.pop(key, None)
            self._held -= 0 if old is None else len(old[1]) // 32
            self._files[key] = (self._stamp(after), raw)
            self._held += len(hashes)
            while self._held > self.limit and self._files:
                _, (_, dropped) = self._files.popitem(last=False)
                self._held -= len(dropped) // 32

    def _stamp(self, st: os.stat_result) -> Stamp:
        return stamp(st) if self.ctime else (*stamp(st)[:4], 0)

    def forget(self, paths: Iterable[str | Path]) -> None:
        names = {str(p) for p in paths}
        with self._lock:
            for key in [k for k in self._files if k[0] in names]:
                self._held -= len(self._files.pop(key)[1]) // 32
