"""Manifests: every file of a transfer, its chunks' BLAKE3 hashes, and one tree hash.

The tree hash covers names, sizes and chunk hashes in a fixed order, so two ends that
agree on it hold the same tree, bit for bit, without comparing file by file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import blake3

from computenet.model.transfer import MAX_ENTRIES, NAME_MAX, Manifest, ManifestEntry, too_long
from computenet.transfer.hashes import HashCache
from computenet.transfer.paths import PART, RESERVED, open_read
from computenet.transfer.wire import TransferError

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


def digest_at(fd: int, offset: int, n: int, holes: bool = True) -> str | None:
    """The hash of ``n`` bytes at ``offset`` (page-aligned) of an open file, read through
    a mapping of the page cache rather than copied out; None where the file is shorter.
    With ``holes``, a range of a sparse file that is all hole is known to read as zeros:
    its hash is had without reading, so a sparse terabyte hashes in a second. A file that
    takes all its size on disk is read whatever the filesystem says of holes in it."""
    if n < _PARALLEL:
        data = os.pread(fd, n, offset)
        return digest(data) if len(data) == n else None
    st = os.fstat(fd)
    if st.st_size < offset + n:
        return None
    if holes and st.st_blocks * 512 < st.st_size and _hole(fd, offset, n):
        return zeros_digest(n)
    with mmap.mmap(fd, n, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset) as m:
        return digest(m)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4)
def zeros_digest(n: int) -> str:
    return digest(bytes(n))


def _hole(fd: int, offset: int, n: int) -> bool:
    """Whether ``n`` bytes at ``offset`` hold no data; False where the filesystem cannot
    tell."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + n
    except OSError as e:
        return e.errno == errno.ENXIO  # no data from ``offset`` to the end


def tree_hash(files: list[ManifestEntry], dirs: list[str]) -> str:
    h = blake3.blake3()
    for d in sorted(dirs):
        h.update(b"D" + d.encode() + b"\0")
    for f in sorted(files, key=lambda e: e.path):
        h.update(b"F" + f.path.encode() + b"\0" + f.size.to_bytes(8, "big"))
        for c in f.chunks:
            h.update(bytes.fromhex(c))
    return h.hexdigest()


def subtree(m: Manifest, inside: str) -> Manifest | None:
    """The manifest a copy of ``inside``, a file or directory of ``m``'s tree, would
    have, tree hash included: a part is checked against the whole that was recorded.
    None where the tree holds no such file or directory."""
    files = [e.model_copy(update={"path": ""}) for e in m.files if e.path == inside]
    dirs: list[str] = []
    if not files:
        if inside not in m.dirs:
            return None
        pre = inside + "/"

        def kept(rel: str) -> bool:  # a walk of the part leaves out a .cnet at its top
            return rel.partition("/")[0] != RESERVED

        files = [
            e.model_copy(update={"path": e.path[len(pre) :]})
            for e in m.files
            if e.path.startswith(pre) and kept(e.path[len(pre) :])
        ]
        dirs = [d[len(pre) :] for d in m.dirs if d.startswith(pre) and kept(d[len(pre) :])]
    return Manifest(
        chunk_size=m.chunk_size, files=files, dirs=dirs, tree_hash=tree_hash(files, dirs)
    )


@dataclass
class Source:
    """A manifest and where each of its files is read from."""

    manifest: Manifest
    paths: list[str]
    left_out: int = 0  # links, special files, partial files in the tree: never copied


def scan(root: Path, own: bool = False) -> tuple[list[tuple[str, str]], list[str], int]:
    """Files (relative name, path) and directories under ``root``: each directory's
    files in name order, then its subdirectories, depth first; and how many entries are
    neither. Symlinks inside a tree are not followed: a tree is copied as the files it
    holds. Entries are told apart by the type the directory listing gives, so the walk
    costs no call per file. A ``.cnet`` at the top is never walked: a data root keeps its
    own files there (``own``: ``root`` is a data root, so it is not counted as left out)."""
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):  # named, not its full path: a server's stays its own
            raise TransferError(
                f"{root.name} is neither a file nor a directory: a copy moves only those"
            )
        return [("", str(root))], [], 0
    files: list[tuple[str, str]] = []
    dirs: list[str] = []
    others = 0
    todo = [(str(root), "")]
    while todo:
        here, prefix = todo.pop()
        try:
            with os.scandir(here) as listing:
                entries = sorted(listing, key=lambda x: x.name)
        except FileNotFoundError:
            continue  # removed while the tree was walked
        subdirs = [
            x.name
            for x in entries
            if x.is_dir(follow_symlinks=False) and (prefix or x.name != RESERVED)
        ]
        dirs.extend(prefix + d for d in subdirs)
        files.extend(
            (prefix + x.name, x.path)
            for x in entries
            if x.is_file(follow_symlinks=False) and not x.name.endswith(PART)
        )
        others += sum(  # partial files and the data server's own: no path may name them
            not (x.is_dir(follow_symlinks=False) or x.is_file(follow_symlinks=False))
            or (x.name.endswith(PART) and x.is_file(follow_symlinks=False))
            or (not (prefix or own) and x.name == RESERVED and x.is_dir(follow_symlinks=False))
            for x in entries
        )
        todo.extend((os.path.join(here, d), f"{prefix}{d}/") for d in reversed(subdirs))
    return files, dirs, others


def travels(rel: str) -> None:
    """Refuses, by name, a name that cannot land as it is: names travel as UTF-8 (in
    JSON), so one that is not (bytes ``os`` could only decode with surrogates) would be
    lost, and a pool path reads a backslash as a separator, so ``a\\b`` would land as
    ``a/b``."""
    if not rel.isascii():
        try:
            rel.encode()
        except UnicodeEncodeError:
            shown = ascii(rel)[1:-1]
            raise TransferError(
                f"{shown}: its name is not UTF-8, so it cannot travel; rename it"
            ) from None
    if "\\" in rel:
        raise TransferError(
            f"{rel}: its name holds a backslash, which a pool path reads as a "
            "separator, so it cannot travel; rename it"
        )
    if len(rel) * 4 > NAME_MAX and (long := too_long(rel.split("/"))) is not None:
        raise TransferError(f"{rel}: {long}, so it cannot travel; rename it")


def _entry(
    rel: str, path: str, chunk: int, cache: HashCache | None
) -> tuple[ManifestEntry, str] | None:
    """A file's entry, from the descriptor its hashes are read through: None where it is
    no longer a regular file. Stamps come from ``fstat`` (see ``HashCache``)."""
    fd = open_read(path, nonblock=True)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size == 0 and os.pread(fd, 1, 0):  # /proc and /sys: sized as they are read
            raise TransferError(
                f"{rel or os.path.basename(path)}: it reads as more than its size of 0 "
                "bytes (a file of /proc or /sys?); copy its contents to a file first"
            )
        hashes = None if cache is None else cache.get(path, st, chunk)
        if hashes is None:
            hashes = hash_fd(fd, st.st_size, chunk)
            if cache is not None:
                cache.put(path, st, os.fstat(fd), chunk, hashes)
    finally:
        os.close(fd)
    entry = ManifestEntry(
        path=rel,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        chunks=hashes,
    )
    return entry, path


def total_size(root: Path) -> int:
    return sizes(root)[0]


def sizes(root: Path) -> tuple[int, int]:
    """The bytes of ``root``'s files, and the bytes they take on disk: less where they
    hold holes, which a copy keeps."""
    total = held = 0
    for _, p in scan(root)[0]:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(p)
            total += st.st_size
            held += min(st.st_size, st.st_blocks * 512)
    return total, held


def build(
    root: Path, chunk: int = CHUNK, cache: HashCache | None = None, own: bool = False
) -> Source:
    """The manifest of ``root``; files whose hashes ``cache`` holds are not read."""
    files, dirs, others = scan(root, own)
    if len(files) + len(dirs) > MAX_ENTRIES:
        raise TransferError(
            f"{root} holds {len(files) + len(dirs)} files and directories; one copy moves "
            f"at most {MAX_ENTRIES}: copy its parts one by one"
        )
    for rel in (*(rel for rel, _ in files), *dirs):
        travels(rel)
    found = [x for rel, p in files if (x := _entry(rel, p, chunk, cache)) is not None]
    entries = [e for e, _ in found]
    return Source(
        Manifest(chunk_size=chunk, files=entries, dirs=dirs, tree_hash=tree_hash(entries, dirs)),
        [p for _, p in found],
        others + len(files) - len(found),
    )
