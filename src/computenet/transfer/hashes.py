"""Chunk hashes a data server has already computed, kept while their file is unchanged.

A pool's files are sent again and again (a dataset to every pool that runs on it, a
retried copy), and hashing the source is a quarter of a local copy's time. A file is the
same file while its device, inode, size, mtime and ctime are: the kernel sets ctime on
every change, and no call can set it back. A file changed less than ``RACY`` before it
was hashed is not kept, since a write in the same clock tick would leave its stamp as it
was. Should a kept hash still go stale (a write through a mapping updates the times late),
the receiver's check refuses the chunk and the server forgets the file's hashes.
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
    """Least recently used first out, up to ``limit`` files."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._files: OrderedDict[tuple[str, int], tuple[Stamp, list[str]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path, st: os.stat_result, chunk: int) -> list[str] | None:
        key = (str(path), chunk)
        with self._lock:
            got = self._files.get(key)
            if got is None or got[0] != stamp(st):
                self.misses += 1
                return None
            self._files.move_to_end(key)
            self.hits += 1
            return list(got[1])

    def put(self, path: Path, before: os.stat_result, chunk: int, hashes: list[str]) -> None:
        """Keeps ``hashes``, taken from ``path`` as ``before`` found it, if the file has not
        changed since then nor just before it."""
        try:
            after = os.lstat(path)
        except OSError:
            return
        changed = max(after.st_mtime_ns, after.st_ctime_ns)
        if stamp(after) != stamp(before) or time.time_ns() - changed < RACY:
            return
        with self._lock:
            self._files[(str(path), chunk)] = (stamp(after), list(hashes))
            self._files.move_to_end((str(path), chunk))
            while len(self._files) > self.limit:
                self._files.popitem(last=False)

    def forget(self, paths: Iterable[Path]) -> None:
        names = {str(p) for p in paths}
        with self._lock:
            for key in [k for k in self._files if k[0] in names]:
                del self._files[key]
