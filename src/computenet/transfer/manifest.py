"""Manifests: every file of a transfer, its chunks' BLAKE3 hashes, and one tree hash.

The tree hash covers names, sizes and chunk hashes in a fixed order, so two ends that
agree on it hold the same tree, bit for bit, without comparing file by file.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import blake3

from computenet.model.transfer import Manifest, ManifestEntry
from computenet.transfer.hashes import HashCache, stamp
from computenet.transfer.paths import PART, RESERVED, open_read

CHUNK = 8 << 20
_PARALLEL = 1 << 20  # from here a chunk is hashed on several threads


def chunks_of(size: int, chunk: int) -> int:
    return (size + chunk - 1) // chunk


def digest(data: bytes | memoryview) -> str:
    threads = blake3.blake3.AUTO if len(data) >= _PARALLEL else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


def hash_chunks(path: Path, size: int, chunk: int, limit: int | None = None) -> list[str]:
    """The first ``limit`` (default: all) chunk hashes of ``size`` bytes of ``path``."""
    fd = open_read(path)
    try:
        return hash_fd(fd, size, chunk, limit)
    finally:
        os.close(fd)


def hash_fd(fd: int, size: int, chunk: int, limit: int | None = None) -> list[str]:
    n = chunks_of(size, chunk) if limit is None else min(limit, chunks_of(size, chunk))
    out = []
    for i in range(n):
        h = digest_at(fd, i * chunk, min(chunk, size - i * chunk))
        if h is None:
            break  # shorter than it was: the hashes so far still stand
        out.append(h)
    return out


def digest_at(fd: int, offset: int, n: int) -> str | None:
    """The hash of ``n`` bytes at ``offset`` (page-aligned) of an open file, read through
    a mapping of the page cache rather than copied out; None where the file is shorter."""
    if n < _PARALLEL:
        data = os.pread(fd, n, offset)
        return digest(data) if len(data) == n else None
    if os.fstat(fd).st_size < offset + n:
        return None
    with mmap.mmap(fd, n, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset) as m:
        return digest(m)  # type: ignore[arg-type]


def tree_hash(files: list[ManifestEntry], dirs: list[str]) -> str:
    h = blake3.blake3()
    for d in sorted(dirs):
        h.update(b"D" + d.encode() + b"\0")
    for f in sorted(files, key=lambda e: e.path):
        h.update(b"F" + f.path.encode() + b"\0" + f.size.to_bytes(8, "big"))
        for c in f.chunks:
            h.update(bytes.fromhex(c))
    return h.hexdigest()


@dataclass
class Source:
    """A manifest and where each of its files is read from."""

    manifest: Manifest
    paths: list[Path]


def scan(root: Path) -> tuple[list[tuple[str, Path, os.stat_result]], list[str]]:
    """Files (relative name, path, stat) and directories under ``root``. Symlinks inside
    a tree are not followed: a tree is copied as the files it holds."""
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{root} is neither a file nor a directory")
        return [("", root, st)], []
    files: list[tuple[str, Path, os.stat_result]] = []
    dirs: list[str] = []
    for here, subdirs, names in os.walk(root):
        base = Path(here)
        rel = base.relative_to(root).as_posix()
        subdirs[:] = sorted(d for d in subdirs if not (rel == "." and d == RESERVED))
        prefix = "" if rel == "." else rel + "/"
        dirs.extend(prefix + d for d in subdirs if not (base / d).is_symlink())
        for name in sorted(names):
            if name.endswith(PART):
                continue
            p = base / name
            s = p.lstat()
            if stat.S_ISREG(s.st_mode):
                files.append((prefix + name, p, s))
    return files, dirs


def _hashes(path: Path, st: os.stat_result, chunk: int, cache: HashCache | None) -> list[str]:
    if cache is None:
        return hash_chunks(path, st.st_size, chunk)
    fd = open_read(path)
    try:
        now = os.fstat(fd)
        same = stamp(now) == stamp(st)  # else it changed since the scan: hash, keep nothing
        got = cache.get(path, now, chunk) if same else None
        if got is None:
            got = hash_fd(fd, st.st_size, chunk)
            if same:
                cache.put(path, now, os.fstat(fd), chunk, got)
        return got
    finally:
        os.close(fd)


def total_size(root: Path) -> int:
    return sum(s.st_size for _, _, s in scan(root)[0])


def build(root: Path, chunk: int = CHUNK, cache: HashCache | None = None) -> Source:
    """The manifest of ``root``; files whose hashes ``cache`` holds are not read."""
    files, dirs = scan(root)
    entries = [
        ManifestEntry(
            path=rel,
            size=s.st_size,
            mode=stat.S_IMODE(s.st_mode),
            mtime_ns=s.st_mtime_ns,
            chunks=_hashes(p, s, chunk, cache),
        )
        for rel, p, s in files
    ]
    return Source(
        Manifest(chunk_size=chunk, files=entries, dirs=dirs, tree_hash=tree_hash(entries, dirs)),
        [p for _, p, _ in files],
    )
