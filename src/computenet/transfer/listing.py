"""What a pool path holds, one directory level at a time: ``cnet ls`` and ``Client.ls``.

The data server answers on a control connection under a get ticket: whoever may copy a
path out may see what is in it. A directory comes in pages of names in byte order, each
page starting after the last name of the one before, so a directory of a million files
costs neither end more than a page at a time. Symbolic links are shown as links and not
followed, and a path that goes through a link is refused: name the path it leads to.
The data server's own files (``/.cnet``) and the partial files of unfinished copies are
not shown at all, nor are names that are not UTF-8, which no pool path can name (the
page counts them).
"""

from __future__ import annotations

import bisect
import os
import stat
from pathlib import Path

from pydantic import ValidationError

from computenet.model.dataset import DatasetRef, DatasetVersion, Replica
from computenet.model.transfer import (
    LIST_PAGE,
    Direction,
    EntryKind,
    ListQuery,
    PoolEntry,
    PoolListing,
    TransferGrant,
    TransferRequest,
)
from computenet.transfer import client
from computenet.transfer.copy import Api, dataset_part, gone_copies, location, online_replicas
from computenet.transfer.paths import PART, RESERVED, normalise, open_dir, parent_of
from computenet.transfer.wire import Code, Refused, TransferError


def kind_of(mode: int) -> EntryKind:
    if stat.S_ISREG(mode):
        return EntryKind.file
    if stat.S_ISDIR(mode):
        return EntryKind.dir
    if stat.S_ISLNK(mode):
        return EntryKind.link
    return EntryKind.other


def _entry(name: str, st: os.stat_result) -> PoolEntry:
    kind = kind_of(st.st_mode)
    return PoolEntry(
        name=name,
        kind=kind,
        size=0 if kind is EntryKind.dir else st.st_size,
        mtime_ns=st.st_mtime_ns,
        mode=stat.S_IMODE(st.st_mode),
    )


def _shown(name: str, top: bool) -> bool:
    if name.startswith(".") and name.endswith(PART):
        return False
    return not (top and name == RESERVED)


def _text(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8, held as surrogates
        return False
    return True


def page(root: Path, pool: str, path: str, query: ListQuery) -> PoolListing:
    """One page of ``path`` under a data root, as its data server sees it. Neither the
    path nor anything in it is followed through a link."""
    shown = "/" + normalise(path)
    try:
        with parent_of(root, path) as (parent, name):
            st = os.stat(name or ".", dir_fd=parent, follow_symlinks=False)
            kind = kind_of(st.st_mode)
            if kind is not EntryKind.dir:
                return PoolListing(pool=pool, path=shown, kind=kind, entries=[_entry(name, st)])
            fd = open_dir(parent, name)
            try:
                return _page(fd, pool, shown, query, top=not name)
            finally:
                os.close(fd)
    except FileNotFoundError:
        raise TransferError(
            f"{shown}: no such file or directory in the pool", Code.MISSING
        ) from None
    except OSError as e:
        raise TransferError(f"{shown}: cannot list it: {e.strerror}") from None


def _page(fd: int, pool: str, shown: str, query: ListQuery, top: bool) -> PoolListing:
    with os.scandir(fd) as it:
        every = [e.name for e in it]
    named = [n for n in every if _text(n)]  # no pool path can name the rest: counted
    names = sorted((n for n in named if _shown(n, top)), key=os.fsencode)
    start = 0
    if query.after is not None:
        start = bisect.bisect_right(names, os.fsencode(query.after), key=os.fsencode)
    chosen = names[start : start + query.limit]
    entries = []
    for name in chosen:
        try:
            entries.append(_entry(name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
        except FileNotFoundError:  # removed since the directory was read
            continue
    more = start + query.limit < len(names)
    return PoolListing(
        pool=pool,
        path=shown,
        kind=EntryKind.dir,
        entries=entries,
        next=chosen[-1] if more and chosen else None,
        unnamed=len(every) - len(named),
    )


async def _ask(grant: TransferGrant, query: ListQuery, tls: bool | None) -> PoolListing:
    answer = await client.ask(grant, "list", {"list": query.model_dump(mode="json")}, tls)
    return PoolListing.model_validate(answer)


async def _copy_kind(api: Api, copy: Replica, tls: bool | None) -> EntryKind | None:
    """What a version's copy is; None where it is gone, and a directory where that
    cannot be learnt (the refusal that led here says more)."""
    ask = TransferRequest(pool=copy.pool, path=copy.path, direction=Direction.get)
    try:
        return (await _ask(await api.grant(ask), ListQuery(limit=1), tls)).kind
    except Refused as e:
        return None if e.code is Code.MISSING else EntryKind.dir
    except Exception:
        return EntryKind.dir


async def _in_version(
    api: Api, ref: DatasetRef, inside: str, query: ListQuery, tls: bool | None
) -> tuple[TransferGrant, PoolListing, DatasetVersion]:
    """The first page of a path in a version, from the first of its copies that is still
    there; a refusal names the version's path, not its copy's."""
    version, copies = await online_replicas(api, ref)
    gone: list[str] = []
    for held in copies:
        path = held.path.rstrip("/") + (f"/{inside}" if inside else "")
        ask = TransferRequest(pool=held.pool, path=path, direction=Direction.get)
        grant = await api.grant(ask)
        try:
            return grant, await _ask(grant, query, tls), version
        except Refused as e:
            kind = await _copy_kind(api, held, tls) if inside else None
            if kind is None and (inside or e.code is Code.MISSING):
                gone.append(f"{held.pool}:{held.path}")
                continue
            if not inside:
                raise
            if kind is EntryKind.file:
                raise Refused(f"{version.uri} is one file: nothing lies inside it") from None
            shown = "/" + normalise(path) + ":"
            if not str(e).startswith(shown):
                raise
            why = str(e)[len(shown) :].replace(" in the pool", " in the version")
            raise Refused(f"{version.uri}/{inside}:{why}") from None
    raise Refused(gone_copies(version, gone))


async def ls(
    target: str,
    api: Api,
    after: str | None = None,
    limit: int | None = None,
    tls: bool | None = None,
) -> PoolListing:
    """What a pool path (``POOL-CPI:/path``) or a dataset (``cnet://dataset/NAME[@V]``,
    listed where one of its copies is) holds. With ``limit`` one page comes back, whose
    ``next`` is the ``after`` of the page that follows; without it, every page as one."""
    try:
        query = ListQuery(after=after, limit=LIST_PAGE if limit is None else limit)
    except ValidationError as e:  # a caller's argument: named as the caller named it
        first = e.errors()[0]
        raise ValueError(f"{first['loc'][0]}: {first['msg']}, not {first['input']!r}") from None
    part = dataset_part(target)  # a path inside a version: NAME@V/some/dir
    version, inside = None, ""
    if part is not None:
        ref, inside = part
        grant, listing, version = await _in_version(api, ref, inside, query, tls)
    else:
        spot = location(target)
        if spot.pool is None:
            raise TransferError(
                f"{target}: name a pool path (POOL-CPI:/path) or a dataset "
                "(cnet://dataset/NAME[@VERSION][/path])"
            )
        grant = await api.grant(
            TransferRequest(pool=spot.pool, path=spot.path, direction=Direction.get)
        )
        listing = await _ask(grant, query, tls)
    if version and not inside and listing.kind is EntryKind.file:
        # a version of one file lies at a name the node chose: it goes by its dataset's
        listing.entries = [e.model_copy(update={"name": version.name}) for e in listing.entries]
    while limit is None and listing.next is not None:
        query = ListQuery(after=listing.next, limit=LIST_PAGE)
        more = await _ask(grant, query, tls)
        listing.entries += more.entries
        listing.next = more.next
    return listing
