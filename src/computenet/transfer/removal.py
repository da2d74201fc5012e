"""Removing a file or a tree from a pool (``cnet rm``, ``Client.rm``), and a dataset
version with its copies (``cnet dataset rm``, ``Client.remove_dataset``).

The node grants a delete ticket for the path, good for a minute, and refuses one where
the path holds a dataset's copy (that goes with ``cnet dataset rm``, so that no job is
sent to a copy that is gone). The data server then removes the path itself, reached one
directory at a time without following a link: a path through a link is refused, and a
link named by the path is removed as a link. A directory goes only when asked
(``recursive``), with everything under it, partial files included; the data root and
the server's own files never. A path that a copy is still reading or writing is refused
until the copy ends.

A dataset version goes in two steps: the node forgets it first, so that nothing is sent
to its copies any more, and then each copy's data is removed under a delete ticket. A
copy whose pool is offline, or refuses, stays and is reported, with the command that
removes it later.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from computenet.model.dataset import DatasetRef, DatasetRemoval
from computenet.model.transfer import Direction, EntryKind, Removal, TransferRequest
from computenet.transfer import client
from computenet.transfer.copy import Api, Grant, location
from computenet.transfer.listing import kind_of
from computenet.transfer.paths import PART, PathError, normalise, parent_of
from computenet.transfer.wire import Code, TransferError


def _sizes(parent: int, name: str) -> tuple[int, int]:
    """Files and links under a directory, and the bytes of its regular files (what a
    data quota counts); nothing is followed."""
    files = size = 0
    for _, dirs, names, fd in os.fwalk(name, dir_fd=parent):
        for n in [*names, *dirs]:
            st = os.stat(n, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                continue
            files += 1
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, size


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


MISSING = "no such file or directory in the pool"


def remove(root: Path, pool: str, path: str, recursive: bool) -> Removal:
    """Removes ``path`` under a data root, reached without following any link."""
    shown = "/" + normalise(path)
    if not normalise(path):
        raise PathError("the data root itself cannot be removed")
    try:
        with parent_of(root, path) as (parent, name):
            st = _lstat(parent, name)
            kind = EntryKind.file if st is None else kind_of(st.st_mode)
            if kind is EntryKind.dir:
                if not recursive:
                    raise TransferError(
                        f"{shown} is a directory: remove it with everything under it (-r)"
                    )
                files, size = _sizes(parent, name)
                shutil.rmtree(name, dir_fd=parent)
                return Removal(pool=pool, path=shown, kind=kind, files=files, bytes=size)
            size = 0
            if st is not None:
                os.unlink(name, dir_fd=parent)
                size = st.st_size if kind is EntryKind.file else 0
            part = f".{name}{PART}"  # a copy that never finished leaves only this
            fits = len(os.fsencode(part)) <= 255  # none beside a name too long to have one
            left = _lstat(parent, part) if fits else None
            if left is not None and stat.S_ISREG(left.st_mode):
                os.unlink(part, dir_fd=parent)
                size += left.st_size
            elif st is None:
                raise FileNotFoundError(name)
            return Removal(pool=pool, path=shown, kind=kind, files=1, bytes=size)
    except FileNotFoundError:
        raise TransferError(f"{shown}: {MISSING}", Code.MISSING) from None
    except OSError as e:
        raise TransferError(f"{shown}: cannot remove it: {e.strerror}") from None


async def rm(
    target: str, grant: Grant, recursive: bool, tls: bool | None = None, tree: str | None = None
) -> Removal:
    """Removes a pool path (``POOL-CPI:/path``); with ``tree``, only as a copy of it."""
    if target.startswith("cnet://"):
        raise TransferError(f"{target}: a dataset version goes with `cnet dataset rm NAME@VERSION`")
    spot = location(target)
    if spot.pool is None:
        raise TransferError(f"{target}: name a pool path (POOL-CPI:/path)")
    g = await grant(TransferRequest(pool=spot.pool, path=spot.path, direction=Direction.delete))
    asked: dict[str, object] = {"recursive": recursive}
    if tree is not None:
        asked["tree_hash"] = tree
    answer = await client.ask(g, "remove", asked, tls)
    return Removal.model_validate(answer)


def _code_of(reason: str) -> Code | None:
    """The code of a reason from a data server that sends none (one older than codes)."""
    if reason.endswith(MISSING):
        return Code.MISSING
    return Code.KEPT if reason.endswith("it is left in place") else None


async def drop_version(api: Api, ref: DatasetRef, tls: bool | None = None) -> DatasetRemoval:
    """Forgets one version (never "the newest": it must be named) and removes its copies."""
    if ref.version is None:
        raise TransferError(f"{ref}: name the version to remove, {ref}@VERSION")
    v = await api.forget(ref.name, ref.version)
    out = DatasetRemoval(version=v)
    for r in v.replicas:
        where = f"{r.pool}:{r.path}"
        try:
            out.removed.append(await rm(where, api.grant, True, tls, v.tree_hash))
        except Exception as e:
            code = getattr(e, "code", None) or _code_of(str(e))
            if code is Code.MISSING:
                out.gone.append(where)
            elif code is Code.KEPT:  # not the version's alone: nothing to advise removing
                out.left.append(f"{where}: {e}")
            elif getattr(e, "status", None) == 403:  # a copy outside the tenant's reach
                out.left.append(f"{where}: {e} (the admin can remove it with `cnet rm -r {where}`)")
            else:
                out.left.append(f"{where}: {e} (remove it later with `cnet rm -r {where}`)")
    return out
