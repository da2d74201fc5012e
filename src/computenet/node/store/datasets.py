"""Dataset versions and their replicas: which pools hold which tree, and where."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, select, update
from sqlalchemy.exc import IntegrityError

from computenet.model.dataset import (
    Dataset,
    DatasetPage,
    DatasetRef,
    DatasetVersion,
    Replica,
    some_versions,
)
from computenet.model.resources import PoolStatus
from computenet.node.errors import Conflict, Forbidden, NotFound
from computenet.node.store.tables import datasets, pools, replicas
from computenet.transfer.paths import within

_live = datasets.c.removed_at.is_(None)


def _when(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _versions(
    conn: Connection, name: str | None = None, names: list[str] | None = None
) -> list[DatasetVersion]:
    q = select(datasets).where(_live).order_by(datasets.c.name, datasets.c.created_at.desc())
    r = select(replicas).order_by(replicas.c.added_at)
    if name is not None:
        q, r = q.where(datasets.c.name == name), r.where(replicas.c.name == name)
    if names is not None:
        q, r = q.where(datasets.c.name.in_(names)), r.where(replicas.c.name.in_(names))
    held: dict[tuple[str, str], list[Replica]] = defaultdict(list)
    for row in conn.execute(r).all():
        held[(row.name, row.version)].append(
            Replica(pool=row.pool_cpi, path=row.path, added_at=_when(row.added_at))
        )
    return [
        DatasetVersion(
            name=row.name,
            version=row.version,
            tenant=row.tenant,
            tree_hash=row.tree_hash,
            total_bytes=row.total_bytes,
            files=row.files,
            created_at=_when(row.created_at),
            replicas=held[(row.name, row.version)],
        )
        for row in conn.execute(q).all()
    ]


def list_page(conn: Connection, limit: int = 100, after: str | None = None) -> DatasetPage:
    """Every version of the first ``limit`` dataset names after ``after``."""
    q = select(datasets.c.name).where(_live).distinct().order_by(datasets.c.name).limit(limit + 1)
    if after is not None:
        q = q.where(datasets.c.name > after)
    names = [row.name for row in conn.execute(q).all()]
    page = names[:limit]
    items = _versions(conn, names=page) if page else []
    return DatasetPage(items=items, next=page[-1] if len(names) > limit else None)


def _removed(conn: Connection, name: str) -> list[str]:
    q = select(datasets.c.version).where(
        datasets.c.name == name, datasets.c.removed_at.is_not(None)
    )
    found = [v for (v,) in conn.execute(q).all()]
    return sorted(found, key=lambda v: (not v.isdigit(), -int(v) if v.isdigit() else 0, v))


def get(conn: Connection, name: str) -> Dataset:
    """A name with every version removed is still its owner's: it is shown, empty."""
    versions, removed = _versions(conn, name), _removed(conn, name)
    if not versions and not removed:
        raise NotFound(f"no dataset {name!r}", field="name")
    return Dataset(name=name, versions=versions, removed=removed)


def resolve(conn: Connection, ref: DatasetRef, field: str = "uri") -> DatasetVersion:
    """The version a reference names: the newest one when it names none."""
    versions = _versions(conn, ref.name)
    for v in versions:
        if ref.version in (None, v.version):
            return v
    if ref.version is not None and ref.version in _removed(conn, ref.name):
        raise NotFound(f"{ref} was removed", field)
    if not versions:
        raise NotFound(f"no dataset {ref.name!r}", field=field)
    known = some_versions([v.version for v in versions])
    raise NotFound(f"dataset {ref.name!r} has no version {ref.version!r} (has {known})", field)


def _next_version(conn: Connection, name: str) -> str:
    """One past the highest number ever published, removed versions included."""
    numbers = [
        int(v)
        for (v,) in conn.execute(select(datasets.c.version).where(datasets.c.name == name)).all()
        if v.isdigit()
    ]
    return str(max(numbers, default=0) + 1)


def owner(conn: Connection, name: str) -> str | None:
    """The tenant a dataset name belongs to: whoever published it first."""
    return conn.execute(
        select(datasets.c.tenant).where(datasets.c.name == name).limit(1)
    ).scalar_one_or_none()


def publish(
    conn: Connection,
    tenant: str,
    name: str,
    version: str | None,
    pool: str,
    path: str,
    tree_hash: str,
    total_bytes: int,
    files: int,
) -> DatasetVersion:
    """A new, immutable version held by ``pool`` at ``path``; one tenant owns a name."""
    held_by = owner(conn, name)
    if held_by is not None and held_by != tenant:
        raise Forbidden(f"dataset {name!r} belongs to tenant {held_by}", field="name")
    version = version or _next_version(conn, name)
    _apart(conn, pool, path)
    now = time.time()
    try:
        with conn.begin_nested():
            conn.execute(
                datasets.insert().values(
                    name=name,
                    version=version,
                    tenant=tenant,
                    tree_hash=tree_hash,
                    total_bytes=total_bytes,
                    files=files,
                    created_at=now,
                )
            )
    except IntegrityError as e:
        why = taken(conn, name, version) or f"dataset {name}@{version} was published meanwhile"
        raise Conflict(why, field="version") from e
    conn.execute(
        replicas.insert().values(name=name, version=version, pool_cpi=pool, path=path, added_at=now)
    )
    return resolve(conn, DatasetRef(name, version))


def add_replica(
    conn: Connection,
    name: str,
    version: str,
    pool: str,
    path: str,
    tree_hash: str,
    again: bool = True,
) -> DatasetVersion:
    """Another pool's copy, one place per pool. Recording it again is a no-op; a second
    place in the same pool is refused: the first would no longer be known, nor kept
    from writes, nor removed with the version."""
    v = resolve(conn, DatasetRef(name, version), "version")
    if v.tree_hash != tree_hash:
        raise Conflict(
            f"the copy's tree hash {tree_hash[:12]}… is not {name}@{version}'s {v.tree_hash[:12]}…",
            field="tree_hash",
        )
    held = next((r for r in v.replicas if r.pool == pool), None)
    if held is not None:
        if held.path.strip("/") == path.strip("/"):
            return v
        raise Conflict(
            f"pool {pool} holds {name}@{version} at {held.path} already: one copy per pool",
            field="pool",
        )
    _apart(conn, pool, path)
    try:
        with conn.begin_nested():
            return _replica(conn, name, version, pool, path, time.time())
    except IntegrityError:  # recorded meanwhile, by another node replica
        if not again:
            raise Conflict(f"{name}@{version} changed meanwhile: try again", "pool") from None
        return add_replica(conn, name, version, pool, path, tree_hash, again=False)


def drop_replica(conn: Connection, name: str, version: str, pool: str, path: str) -> bool:
    """Forgets ``pool``'s copy at ``path``, found changed: it is no longer the version."""
    key = and_(
        replicas.c.name == name,
        replicas.c.version == version,
        replicas.c.pool_cpi == pool,
        replicas.c.path == path,
    )
    return bool(conn.execute(delete(replicas).where(key)).rowcount)


def taken(conn: Connection, name: str, version: str) -> str | None:
    """Why ``name@version`` cannot be published, or None: a version never changes, and
    its number is never used again once removed."""
    q = select(datasets.c.removed_at).where(datasets.c.name == name, datasets.c.version == version)
    row = conn.execute(q).first()
    if row is None:
        return None
    if row.removed_at is None:
        return f"{name}@{version} exists; versions never change: publish a new one"
    return f"{name}@{version} was removed, and a version is never used again: publish a new one"


def _apart(conn: Connection, pool: str, path: str) -> None:
    """A copy never lies at, inside or above another: each is kept from writes, and
    removed with its version, as a whole."""
    held = held_at(conn, pool, path.strip("/"))
    if held:
        name, version, where = held[0]
        raise Conflict(
            f"/{where} holds dataset {name}@{version}: a copy cannot lie at, inside or "
            "above another",
            field="path",
        )


def _replica(
    conn: Connection, name: str, version: str, pool: str, path: str, now: float
) -> DatasetVersion:
    values = {"name": name, "version": version, "pool_cpi": pool, "path": path}
    conn.execute(replicas.insert().values(**values, added_at=now))
    return resolve(conn, DatasetRef(name, version))


def forget(conn: Connection, name: str, version: str, tenant: str, admin: bool) -> DatasetVersion:
    """Drops a version and the records of its copies; only its owner (or an admin) may.
    Its row stays, marked removed: the name stays its owner's and the number is not
    given out again, so that a URI never names two different trees."""
    v = resolve(conn, DatasetRef(name, version), "version")
    if v.tenant != tenant and not admin:
        raise Forbidden(f"dataset {name!r} belongs to tenant {v.tenant}", field="name")
    conn.execute(
        delete(replicas).where(and_(replicas.c.name == name, replicas.c.version == version))
    )
    key = and_(datasets.c.name == name, datasets.c.version == version)
    conn.execute(update(datasets).where(key).values(removed_at=time.time()))
    return v


def held_at(conn: Connection, pool: str, path: str) -> list[tuple[str, str, str]]:
    """The dataset copies in ``pool`` at, under or above ``path`` (normalised): (name,
    version, where). A copy recorded at the root itself (which no longer can be) is left
    out: keeping it apart would keep every path of the pool."""
    rows = conn.execute(
        select(replicas.c.name, replicas.c.version, replicas.c.path).where(
            replicas.c.pool_cpi == pool
        )
    ).all()
    out = []
    for row in rows:
        where = row.path.strip("/")
        if where and (within(path, where) or within(where, path)):
            out.append((row.name, row.version, where))
    return out


def unwritable(name: str, version: str, where: str) -> str:
    return (
        f"/{where} holds dataset {name}@{version}, and versions never change: "
        "write somewhere else, or publish the data as a new version"
    )


class Holdings:
    """What the scheduler asks of each input: its bytes and the pools that hold it.

    Read once per pass, and only when a job has inputs.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._by_name: dict[str, list[Any]] | None = None
        self._held: dict[tuple[str, str], frozenset[str]] = {}
        self._copies: dict[tuple[str, str], frozenset[str]] = {}  # offline pools' too
        self._pools: dict[str, bool] = {}  # asked of one at a time: a pass needs few

    def _load(self) -> dict[str, list[Any]]:
        by_name: dict[str, list[Any]] = defaultdict(list)
        q = select(datasets.c.name, datasets.c.version, datasets.c.total_bytes).where(_live)
        for row in self._conn.execute(q.order_by(datasets.c.created_at.desc())).all():
            by_name[row.name].append(row)
        held: dict[tuple[str, str], set[str]] = defaultdict(set)
        copies: dict[tuple[str, str], set[str]] = defaultdict(set)
        where = select(replicas.c.name, replicas.c.version, replicas.c.pool_cpi, pools.c.status)
        for r in self._conn.execute(where.join(pools, pools.c.cpi == replicas.c.pool_cpi)).all():
            copies[(r.name, r.version)].add(r.pool_cpi)
            if r.status != PoolStatus.offline.value:  # else fetched from nowhere
                held[(r.name, r.version)].add(r.pool_cpi)
        self._held = {k: frozenset(v) for k, v in held.items()}
        self._copies = {k: frozenset(v) for k, v in copies.items()}
        return by_name

    def copies(self, ref: DatasetRef) -> frozenset[str]:
        """Every pool of this node that holds a copy of the version, whatever its status."""
        if self._by_name is None:
            self._by_name = self._load()
        for row in self._by_name.get(ref.name, ()):
            if ref.version is None or row.version == ref.version:
                return self._copies.get((row.name, row.version), frozenset())
        return frozenset()

    def registered(self, pool: str) -> bool:
        """Whether ``pool`` is one of this node's (a pool path may name another node's)."""
        if pool not in self._pools:
            q = select(pools.c.cpi).where(pools.c.cpi == pool)
            self._pools[pool] = self._conn.execute(q).first() is not None
        return self._pools[pool]

    def dataset(self, ref: DatasetRef) -> tuple[int, frozenset[str]] | None:
        if self._by_name is None:
            self._by_name = self._load()
        for row in self._by_name.get(ref.name, ()):
            if ref.version is None or row.version == ref.version:
                return int(row.total_bytes), self._held.get((row.name, row.version), frozenset())
        return None
