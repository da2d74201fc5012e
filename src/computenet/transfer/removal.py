"""Removing a file or a tree from a pool (``cnet rm``, ``Client.rm``), and a dataset
version with its copies (``cnet dataset rm``, ``Client.remove_dataset``).

The node grants a delete ticket for the path, and refuses one where the path holds a
dataset's copy (that goes with ``cnet dataset rm``, so that no job is sent to a copy that
is gone). The data server then removes the path itself: a symbolic link is removed as a
link, never followed; a directory only when asked to (``recursive``), with everything
under it, partial files of unfinished copies included; the data root and the server's
own files never. A path that a copy is still reading or writing is refused until it ends.

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
from computenet.transfer.paths import PathError, confine, normalise, part_of
from computenet.transfer.wire import TransferError


def _sizes(where: Path) -> tuple[int, int]:
    """Files and bytes under a directory, links and all, nothing followed."""
    files = size = 0
    for here, dirs, names in os.walk(where):
        for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(here, d)))]:
            files += 1
            size += os.lstat(os.path.join(here, name)).st_size
    return files, size


def remove(root: Path, pool: str, path: str, recursive: bool) -> Removal:
    """Removes ``path`` under a data root: its parent is confined (no symlink leads out),
    the last name is taken as it is."""
    shown = "/" + normalise(path)
    if not normalise(path):
        raise PathError("the data root itself cannot be removed")
    parent, _, name = normalise(path).rpartition("/")
    where = confine(root, parent) / name
    try:
        st = where.lstat()
    except FileNotFoundError:
        raise TransferError(f"{shown}: no such file or directory in the pool") from None
    if not stat.S_ISDIR(st.st_mode):
        where.unlink()
        part = part_of(where)
        if part.is_file() and not part.is_symlink():
            part.unlink()
        kind = EntryKind.link if stat.S_ISLNK(st.st_mode) else EntryKind.file
        return Removal(pool=pool, path=shown, kind=kind, files=1, bytes=st.st_size)
    if not recursive:
        raise TransferError(f"{shown} is a directory: remove it with everything under it (-r)")
    files, size = _sizes(where)
    shutil.rmtree(where)
    return Removal(pool=pool, path=shown, kind=EntryKind.dir, files=files, bytes=size)


async def rm(target: str, grant: Grant, recursive: bool, tls: bool | None = None) -> Removal:
    """Removes a pool path (``POOL-CPI:/path``)."""
    spot = location(target)
    if spot.pool is None:
        raise TransferError(f"{target}: name a pool path (POOL-CPI:/path)")
    g = await grant(TransferRequest(pool=spot.pool, path=spot.path, direction=Direction.delete))
    answer = await client.ask(g, "remove", {"recursive": recursive}, tls)
    return Removal.model_validate(answer)


async def drop_version(api: Api, ref: DatasetRef, tls: bool | None = None) -> DatasetRemoval:
    """Forgets one version (never "the newest": it must be named) and removes its copies."""
    if ref.version is None:
        raise TransferError(f"{ref}: name the version to remove, {ref}@VERSION")
    v = await api.forget(ref.name, ref.version)
    out = DatasetRemoval(version=v)
    for r in v.replicas:
        where = f"{r.pool}:{r.path}"
        try:
            out.removed.append(await rm(where, api.grant, True, tls))
        except Exception as e:
            out.left.append(f"{where}: {e} (remove it later with `cnet rm -r {where}`)")
    return out
