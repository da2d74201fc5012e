"""``cnet cp`` and ``Client.copy``: what each side names, which ticket to ask for, which way.

A side is a local path, a pool path, ``POOL-CPI:/path`` (``cpi:local:acme/gpu-a:/in``), or
a dataset, ``cnet://dataset/NAME[@VERSION]``. A path ending in ``/`` names a directory: a
file copied there keeps its name. A dataset as the source is copied from one of the pools
that hold it; as the destination, the data goes into a pool's ``/datasets/NAME/`` and is
then published as a version, with the tree hash the copy verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from computenet.model.dataset import (
    Dataset,
    DatasetPublish,
    DatasetRef,
    DatasetVersion,
    DataURIError,
    Replica,
    ReplicaAdd,
    parse_dataset,
    parse_pool_path,
    some_versions,
    split_input,
    unrecordable,
)
from computenet.model.resources import Pool, PoolStatus
from computenet.model.transfer import (
    MAX_TTL,
    Direction,
    TransferCounters,
    TransferGrant,
    TransferRequest,
    TransferResult,
)
from computenet.sdk import naming
from computenet.transfer import client
from computenet.transfer.client import Options
from computenet.transfer.manifest import subtree, total_size, travels, tree_hash
from computenet.transfer.paths import PathError, normalise
from computenet.transfer.wire import Code, TransferError

Grant = Callable[[TransferRequest], Awaitable[TransferGrant]]


@dataclass(frozen=True)
class Api:
    """The node calls a copy makes: tickets, and for datasets, where they are."""

    grant: Grant
    dataset: Callable[[str], Awaitable[Dataset | None]]  # None: no such name
    publish: Callable[[DatasetPublish], Awaitable[DatasetVersion]]
    # None: the caller may not record a copy of that dataset (another tenant's)
    replica: Callable[[str, str, ReplicaAdd], Awaitable[DatasetVersion | None]]
    pools: Callable[[], Awaitable[list[Pool]]]
    forget: Callable[[str, str], Awaitable[DatasetVersion]]  # drops a version's records


@dataclass(frozen=True)
class Location:
    pool: str | None  # None: a local path
    path: str


def location(text: str) -> Location:
    if not text.startswith("cpi:"):
        if not text:
            raise TransferError("an empty path names nothing")
        if text.lower().startswith(("cnet:", "cpi:")):  # a mistyped URI, not a file to make
            raise TransferError(
                f"{text!r} is neither a pool path (POOL-CPI:/path) nor a dataset "
                f"(cnet://dataset/NAME[@VERSION]); name a local path that starts so as ./{text}"
            )
        return Location(None, text)
    try:
        ref = parse_pool_path(text)
        ref.path.encode()
    except DataURIError as e:
        raise TransferError(str(e)) from e
    except UnicodeEncodeError:
        raise TransferError(
            f"{ascii(text)[1:-1]}: a pool path travels as UTF-8, and this one is not"
        ) from None
    return Location(ref.pool, ref.path)


async def copy(src: str, dst: str, grant: Grant, options: Options | None = None) -> TransferResult:
    options = options or Options()
    s, d = location(src), location(dst)
    ttl = min(MAX_TTL, max(600.0, options.deadline or 0.0))  # checked as streams join
    if s.pool is None and d.pool is not None:
        local = Path(s.path)
        if not local.exists():
            raise TransferError(f"{local}: no such file or directory")
        remote = d.path
        if d.path.endswith("/") and local.is_file():  # the name becomes part of a pool path
            travels(local.name)
            remote += local.name
        # Named itself, a link is followed (as cp follows one), and its file is the size.
        size = await asyncio.to_thread(total_size, local.resolve() if local.is_symlink() else local)
        g = await grant(
            TransferRequest(pool=d.pool, path=remote, direction=Direction.put, size=size, ttl=ttl)
        )
        return await client.put(g, local, options)
    if s.pool is not None and d.pool is None:
        g = await grant(TransferRequest(pool=s.pool, path=s.path, direction=Direction.get, ttl=ttl))
        into = d.path.endswith(("/", os.sep))  # as cp reads dir/: a directory to land in
        return await client.get(g, Path(d.path), replace(options, into=into))
    if s.pool is None or d.pool is None:
        raise TransferError("both sides are local paths: one side must be a pool path")
    to_pool = d.pool

    async def destination(size: int, single: bool) -> TransferGrant:
        name = options.name or s.path.rstrip("/").rsplit("/", 1)[-1]
        remote = d.path + name if d.path.endswith("/") and single else d.path
        if to_pool == s.pool and _same(remote, s.path):
            raise TransferError(f"{src} and {dst} are the same path: there is nothing to copy")
        req = TransferRequest(
            pool=to_pool, path=remote, direction=Direction.put, size=size, ttl=ttl
        )
        return await grant(req)

    g = await grant(TransferRequest(pool=s.pool, path=s.path, direction=Direction.get, ttl=ttl))
    return await client.relay(g, destination, options)


def _recordable(path: str) -> bool:
    return unrecordable(normalise(path)) is None


def _same(a: str, b: str) -> bool:
    """Whether two pool paths name one place; a path no ticket would grant names none."""
    try:
        return normalise(a) == normalise(b)
    except PathError:
        return False


def _serving(pools: list[Pool]) -> dict[str, Pool]:
    return {p.cpi: p for p in pools if p.status is not PoolStatus.offline and p.data is not None}


async def online_replicas(api: Api, ref: DatasetRef) -> tuple[DatasetVersion, list[Replica]]:
    """The version ``ref`` names and its copies in pools that are online: at least one."""
    d = await api.dataset(ref.name)
    v = next((v for v in d.versions if ref.version in (None, v.version)), None) if d else None
    if d is None:
        raise TransferError(f"{ref}: no such dataset")
    if v is None:
        if ref.version in d.removed:
            raise TransferError(f"{ref}: that version was removed")
        if not d.versions:
            raise TransferError(f"{ref}: every version of it was removed")
        have = some_versions([x.version for x in d.versions])
        raise TransferError(f"{ref}: no such version (it has {have})")
    serving = _serving(await api.pools())
    held = [r for r in v.replicas if r.pool in serving]
    if not v.replicas:
        raise TransferError(
            f"{v.uri}: no pool holds a copy any more (a copy found changed is dropped): "
            "publish the data again"
        )
    if not held:
        raise TransferError(f"{v.uri}: no pool that holds it is online")
    return v, held


def gone_copies(v: DatasetVersion, where: list[str]) -> str:
    """Why a version cannot be read: the copies the node names are not there any more
    (and the rest, where there are others, are in pools that are offline)."""
    one = len(where) == 1
    said = (
        f"{v.uri}: its {'copy' if one else 'copies'} in {', '.join(where)} "
        f"{'is' if one else 'are'} gone (removed by hand?): nothing was read"
    )
    if len(where) < len(v.replicas):
        return f"{said}; its other copies are in pools that are offline"
    return f"{said}; `cnet dataset rm {v.name}@{v.version}` forgets the version"


def dataset_part(text: str) -> tuple[DatasetRef, str] | None:
    """The dataset a ``cnet://`` URI names and the path inside it ('' for all of it):
    ``cnet://dataset/NAME[@VERSION][/path]``, split as a job input's is."""
    if not text.startswith("cnet://"):
        return None
    try:
        uri, inside = split_input(text)
    except ValueError as e:
        raise TransferError(f"{text}: {e}") from e
    ref = dataset_ref(uri)
    if ref is None:
        return None
    try:
        return ref, normalise(inside)
    except PathError as e:
        raise TransferError(f"{text}: {e}") from e


def dataset_ref(text: str) -> DatasetRef | None:
    """The dataset a ``cnet://`` URI names; None for anything else."""
    if not text.startswith("cnet://"):
        return None
    try:
        return parse_dataset(text)
    except DataURIError as e:
        raise TransferError(str(e)) from e


async def _unnumbered(api: Api, ref: DatasetRef, pool: str, src: Location) -> str:
    """The directory of a copy whose version is numbered only once it is published: the
    same for the same source, pool and machine, so that running an interrupted copy
    again resumes it; the next of ``-2``, ``-3``, … where that one is a published copy
    already (a later version of the same source)."""
    try:
        where = f"{src.pool}:/{normalise(src.path)}" if src.pool else str(Path(src.path).resolve())
    except PathError as e:
        raise TransferError(str(e)) from e
    key = "\0".join((socket.gethostname(), pool, where)).encode(errors="surrogateescape")
    tag = "u-" + hashlib.sha256(key).hexdigest()[:12]
    d = await api.dataset(ref.name)
    held = {(r.pool, normalise(r.path)) for v in (d.versions if d else []) for r in v.replicas}
    n, name = 1, tag
    while (pool, f"datasets/{ref.name}/{name}") in held:
        n += 1
        name = f"{tag}-{n}"
    return name


async def _inside(
    api: Api, v: DatasetVersion, held: Replica, inside: str, options: Options
) -> tuple[str, str]:
    """Where a path inside a version lies in ``held``'s copy, and the tree hash a copy of
    it must have: the copy's whole manifest is read first (nothing moves) and checked
    against the version, so that the part is checked against the version too."""
    ask = TransferRequest(pool=held.pool, path=held.path, direction=Direction.get, ttl=120)
    whole = await client.manifest(await api.grant(ask), options)
    if tree_hash(whole.files, whole.dirs) != v.tree_hash:
        raise TransferError(
            f"{v.uri}: the copy in {held.pool}:{held.path} has changed since it was "
            "recorded; nothing was copied"
        )
    part = subtree(whole, inside)
    if part is None:
        raise TransferError(f"{v.uri}/{inside}: no such file or directory in the version")
    return f"{held.pool}:{held.path.rstrip('/')}/{inside}", part.tree_hash


async def _from_copy(
    api: Api,
    v: DatasetVersion,
    mine: Replica,
    inside: str,
    dst: str,
    options: Options | None,
    ref: DatasetRef,
) -> tuple[TransferResult, str]:
    """A copy of the version (or of the path ``inside`` it) from the copy ``mine``, and
    the tree hash it must have."""
    where, expect = f"{mine.pool}:{mine.path}", v.tree_hash
    if inside:
        where, expect = await _inside(api, v, mine, inside, options or Options())
    # A version that is one file lies at a path the node chose (``u-…``, ``1``): into
    # a directory, it is named after its dataset.
    one = None if inside else ref.name  # checked here, as the URI was parsed
    checked = replace(options or Options(), tree_hash=expect, name=one)
    return await copy(where, dst, api.grant, checked), expect


async def _holds(api: Api, r: Replica, tree: str, options: Options | None) -> bool:
    """Whether the copy ``r`` still hashes to the version's tree, as its server says."""
    g = await api.grant(TransferRequest(pool=r.pool, path=r.path, direction=Direction.get))
    m = await client.manifest(g, options)
    return m.tree_hash == tree


async def copy_data(
    src: str,
    dst: str,
    api: Api,
    options: Options | None = None,
    pool: str | None = None,
) -> TransferResult:
    """``copy``, with datasets on either side. ``pool`` is where a dataset destination
    goes (default: the source's pool, else the first pool online)."""
    s_part, d_ref = dataset_part(src), dataset_ref(dst)
    if pool is not None and d_ref is None:
        raise TransferError("--pool chooses where a new dataset version goes: name a dataset")
    if s_part is not None and d_ref is not None:
        raise TransferError("both sides are datasets: a version is already where it is")
    if s_part is not None:
        s_ref, inside = s_part
        v, held = await online_replicas(api, s_ref)
        d = location(dst)
        here = next(
            (r for r in held if not inside and r.pool == d.pool and _same(r.path, d.path)),
            None,
        )
        if here is not None and await _holds(api, here, v.tree_hash, options):
            # run again, as scripts do: the copy is there, recorded, and as it was
            return TransferResult(
                source=v.uri,
                destination=dst,
                direction="none",
                streams=0,
                seconds=0.0,
                tree_hash=v.tree_hash,
                total_bytes=v.total_bytes,
                counters=TransferCounters(files_skipped=v.files, bytes_skipped=v.total_bytes),
                replica_of=v.uri,
            )
        gone: list[str] = []
        for mine in sorted(held, key=lambda r: r.pool != d.pool):  # the destination's first
            try:
                result, expect = await _from_copy(api, v, mine, inside, dst, options, s_ref)
                break
            except TransferError as e:
                if e.code is not Code.MISSING:
                    raise
                gone.append(f"{mine.pool}:{mine.path}")
        else:
            raise TransferError(gone_copies(v, gone))
        if result.tree_hash != expect:
            what = f"{v.uri}/{inside}: the part's" if inside else f"{v.uri}: the copy's"
            raise TransferError(f"{what} tree hash is not the version's")
        landed = parse_pool_path(result.destination) if d.pool is not None else None
        if inside:  # a part of a version is not recorded: a copy is of a whole version
            result.source = f"{v.uri}/{inside}"
            return result
        if (
            landed is not None
            and landed.pool not in {r.pool for r in v.replicas}  # one copy a pool
            and _recordable(landed.path)
            and result.merged is False  # a server that cannot say: not recorded
        ):
            add = ReplicaAdd(pool=landed.pool, path=landed.path, tree_hash=v.tree_hash)
            if await api.replica(v.name, v.version, add) is not None:
                result.replica_of = v.uri
        result.source = v.uri
        return result
    if d_ref is None:
        return await copy(src, dst, api.grant, options)
    if d_ref.version is not None:  # refused before any byte moves, as the node would after
        named = await api.dataset(d_ref.name)
        if named is not None and d_ref.version in named.removed:
            raise TransferError(
                f"{d_ref} was removed, and a version is never used again: publish a new one"
            )
        if named is not None and any(v.version == d_ref.version for v in named.versions):
            raise TransferError(f"{d_ref} exists; versions never change: publish a new one")
    s = location(src)
    pools = await api.pools()
    serving = _serving(pools)
    try:
        chosen = naming.pool_cpi(pool, pools) if pool is not None else None
    except ValueError as e:
        raise TransferError(str(e)) from None
    target = chosen or s.pool or next(iter(serving), None)
    if target is None:
        raise TransferError("no pool with a data server is online to hold the dataset")
    if target not in serving:
        raise TransferError(f"pool {target} is not online with a data server")
    path = f"/datasets/{d_ref.name}/{d_ref.version or await _unnumbered(api, d_ref, target, s)}"
    exact = replace(options or Options(), exact=True)  # a version is what was copied
    try:
        result = await copy(src, f"{target}:{path}", api.grant, exact)
    except TransferError as e:  # the path numbered for it is taken: only a name moves it
        if e.code is not Code.OCCUPIED or d_ref.version is not None:
            raise
        raise TransferError(f"{e}: name one, cnet://dataset/{d_ref.name}@VERSION") from None
    v = await api.publish(
        DatasetPublish(
            name=d_ref.name,
            version=d_ref.version,
            pool=target,
            path=path,
            tree_hash=result.tree_hash,
            total_bytes=result.total_bytes,
            files=result.counters.files + result.counters.files_skipped,
        )
    )
    result.destination = v.uri
    return result
