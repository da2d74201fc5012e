"""Every path a transfer touches stays under the pool's data root.

Names are checked as text first (no ``..``, nothing absolute, nothing reserved), then as
the filesystem sees them (a symlink that leads out is refused), and files are opened with
``O_NOFOLLOW`` so that a link swapped in after the check is not followed either.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from computenet.model.transfer import too_long
from computenet.transfer.wire import TransferError

RESERVED = ".cnet"  # the data server's own files, under the root
PART = ".cnetpart"  # suffix of a file still being received


class PathError(ValueError):
    """A path that would leave the data root or that no transfer may name."""


def normalise(path: str) -> str:
    """A pool path as the ticket and the server see it: relative, ``/``-separated, with
    ``''`` for the root itself."""
    if "\x00" in path:
        raise PathError("a path may not contain NUL")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"{path!r}: '..' is not allowed in a pool path")
    if parts and parts[0] == RESERVED:
        raise PathError(f"{path!r}: {RESERVED} is reserved for the data server")
    if any(p.endswith(PART) for p in parts):
        raise PathError(f"{path!r}: names ending {PART} are reserved for partial files")
    return "/".join(parts)


def writable_name(path: str) -> None:
    """Refuses a path a put could not land, by the name that is too long: the check is
    for writes only, so that a name made otherwise can still be listed, read by name
    and removed."""
    if (long := too_long(path.split("/"))) is not None:
        raise PathError(long)


def within(prefix: str, path: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (both normalised)."""
    return not prefix or path == prefix or path.startswith(prefix + "/")


def confine(root: Path, path: str, links: bool = True, what: str = "the data root") -> Path:
    """The real location of ``path`` under ``root``; refused where a symlink leads out and,
    without ``links``, wherever one lies on the way: the node grants a path as text, so
    through a link one tenant's path would reach another's."""
    base = root.resolve()
    rel = normalise(path)
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        # ".." is refused above: only a link can lead out
        raise PathError(f"{'/' + rel!r} leads out of {what} through a link")
    if target.is_relative_to(base / RESERVED):  # reached through a link to the root
        raise PathError(f"{'/' + rel!r}: {RESERVED} is reserved for the data server")
    if not links and target != base / rel:
        at = base
        for i, name in enumerate(rel.split("/")):
            at = at / name
            if at.is_symlink():
                shown = "/" + "/".join(rel.split("/")[: i + 1])
                raise PathError(f"{shown!r} is a link: name the path it leads to")
    return target


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def parent_of(root: Path, path: str) -> Iterator[tuple[int, str]]:
    """A descriptor of ``path``'s parent directory, reached one name at a time without
    following a link, and the last name: ``ls`` and ``rm`` act through it, so neither a
    link nor a directory swapped for one in the meantime takes them anywhere else. The
    root itself is (its descriptor, "")."""
    parts = normalise(path).split("/")
    fd = os.open(root, _DIR)
    try:
        for i, name in enumerate(parts[:-1]):
            try:
                inner = os.open(name, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                shown = "/" + "/".join(parts[: i + 1])
                raise PathError(
                    f"{shown!r} is a link or a file, not a directory "
                    "(through a link, name the path it leads to)"
                ) from None
            os.close(fd)
            fd = inner
        yield fd, parts[-1]
    finally:
        os.close(fd)


def open_dir(parent: int, name: str) -> int:
    """A directory under ``parent`` (or ``parent`` again for ""), never through a link."""
    return os.dup(parent) if not name else os.open(name, _DIR, dir_fd=parent)


def open_read(path: str | Path, nonblock: bool = False) -> int:
    """``nonblock``: a FIFO swapped in for a listed file opens rather than waits for a
    writer (regular files ignore the flag)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags | os.O_NONBLOCK if nonblock else flags)


def open_part(path: Path) -> int:
    """A partial file is reopened as it is: what it already holds may be resumed."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def held(fd: int, busy: str | Callable[[], str]) -> int:
    """``fd`` with its exclusive lock taken, or ``busy`` raised (and ``fd`` closed) where
    another copy holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        why = busy() if callable(busy) else busy  # made only when refused: not per file
        raise TransferError(f"{why}: run this one again once it ends") from None
    return fd


@contextlib.contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Holds ``lock`` (a hidden file, removed after) for one copy into ``what``: two copies
    into one destination at once would resume each other's partial files, and the one
    that committed last could leave the other's chunks, or holes, in a file."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:  # named as the user named it, not by the lock's own name
            raise TransferError(f"{what}: cannot write there: {e.strerror or e}") from None
        held(fd, f"another copy into {what} is running")
        st = os.fstat(fd)
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(lock)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                break
        os.close(fd)  # removed by the copy that held it as this one opened it: again
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def part_of(final: Path) -> Path:
    return final.with_name(f".{final.name}{PART}")


def files_under(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under a data root, the data server's own aside, with its
    ``lstat``."""
    for here, dirs, files in os.walk(root):
        if here == str(root):
            dirs[:] = [d for d in dirs if d != RESERVED]
        for name in files:
            p = os.path.join(here, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue  # gone since the listing
            if stat.S_ISREG(st.st_mode):
                yield p, st


def sweep_parts(root: Path, before: float) -> int:
    """Removes the partial files under ``root`` untouched since ``before`` (a time); how
    many it removed. By ctime, not mtime: a finished partial file already carries its
    source's mtime, which may be years old, and ctime is what no call can set back."""
    removed = 0
    for p, st in files_under(root):
        if p.endswith(PART) and st.st_ctime < before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                removed += 1
    return removed


def drop_parts(root: Path) -> int:
    """Removes the partial files under ``root`` that no copy holds (an earlier copy's,
    cut short); how many. One a copy still writes is locked, and left to it."""
    removed = 0
    for p, _ in files_under(root):
        if not p.endswith(PART):
            continue
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(p)
            removed += 1
        except OSError:  # held (BlockingIOError), or gone meanwhile
            pass
        finally:
            os.close(fd)
    return removed


FETCHES = "fetch"  # under RESERVED: datasets an agent fetches for its jobs, until whole


def fetch_area(root: Path, rel: str) -> Path:
    """Where a fetch of pool path ``rel`` lands until it is whole: out of sight of
    listings and puts, on the data root's file system so that a rename moves it in."""
    key = hashlib.sha256(normalise(rel).encode(errors="surrogateescape")).hexdigest()[:24]
    return root / RESERVED / FETCHES / key


def sweep_fetches(root: Path, before: float) -> int:
    """Removes fetches that nothing under them has changed since ``before`` (by ctime):
    those of jobs canceled and never run again."""
    removed = 0
    area = root / RESERVED / FETCHES
    for entry in area.iterdir() if area.is_dir() else []:
        newest = entry.lstat().st_ctime
        for here, _, files in os.walk(entry):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(here, name)).st_ctime)
        if newest < before:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
            removed += 1
    return removed


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def reserve(fd: int, offset: int, n: int) -> None:
    """Allocates a chunk's blocks before its bytes land. Streams write one file at
    several offsets at once; allocated as they land, the blocks of a file on disk would
    interleave, and a full disk would be found half way through a chunk. ``fallocate``,
    not ``posix_fallocate``: where a filesystem cannot reserve, this does nothing,
    rather than write every block twice."""
    if _fallocate is None or n <= 0:
        return
    if _fallocate(fd, 0, offset, n) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return
    raise OSError(code, os.strerror(code))


_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28 and later
if _renameat2 is not None:
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def swap_in(new: Path, dest: Path) -> None:
    """Puts ``new`` at ``dest`` in one step, whatever each is, and removes what was there:
    a reader sees the old tree or the new one, never neither. Where the filesystem cannot
    exchange two names, the old one is removed first (a short gap, nothing mixed)."""
    if not (dest.exists() or dest.is_symlink()):
        os.replace(new, dest)
        return
    if _renameat2 is not None:
        a, b = os.fsencode(new), os.fsencode(dest)
        if _renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) == 0:
            remove(new)  # the old tree, under the new one's former name
            return
        code = ctypes.get_errno()
        if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), str(dest))
    remove(dest)
    os.replace(new, dest)


def remove(p: Path) -> None:
    """``p`` and all below it, without following links; nothing where it is missing."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
