"""The live index: every pool's state in memory, so discovery answers without the store.

The store stays the truth. The index is rebuilt from it at start, kept current by the
node's own writes (registrations, heartbeats, placements, releases), and re-read in full
every few seconds, which is also how one replica learns what another changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from computenet.model import Capacity, DeviceKind, Pool, PoolStatus
from computenet.model.discovery import AcceleratorGroup, PoolSummary
from computenet.model.job import arch_name
from computenet.node.columns import Columns
from computenet.node.query import OPS, Query, Term

QUEUE_SIZE = 1000


@dataclass(slots=True)
class Entry:
    pool: Pool
    free: Capacity
    accelerators: list[AcceleratorGroup]
    vendors: frozenset[str]
    models: tuple[str, ...]
    archs: frozenset[str]
    kinds: frozenset[str]
    max_device_memory: int
    summary: PoolSummary | None = None
    # Heartbeats land here, not in ``pool``: copying a whole pool record for each one
    # would cost more than everything else a heartbeat does.
    telemetry: dict[str, Any] | None = None
    last_contact: datetime | None = None

    @classmethod
    def of(cls, pool: Pool) -> Entry:
        groups: Counter[tuple[str, str, str, str, int]] = Counter()
        archs, kinds, vendors = set(), set(), set()
        for m in pool.machines:
            if m.arch:
                archs.add(arch_name(m.arch))
            for d in m.devices:
                kinds.add(d.kind.value)
                vendors.add(d.vendor.lower())
                if d.arch:
                    archs.add(d.arch.lower())
                if d.kind is not DeviceKind.cpu:
                    groups[(d.kind.value, d.vendor, d.model, d.arch, d.memory_bytes)] += 1
        accel = [
            AcceleratorGroup(kind=k, vendor=v, model=mo, arch=a, memory_bytes=mem, count=n)
            for (k, v, mo, a, mem), n in sorted(groups.items())
        ]
        return cls(
            pool=pool,
            free=pool.free,
            accelerators=accel,
            vendors=frozenset(vendors),
            models=tuple(g.model.lower() for g in accel),
            archs=frozenset(archs),
            kinds=frozenset(kinds),
            max_device_memory=max((g.memory_bytes for g in accel), default=0),
        )

    def to_summary(self) -> PoolSummary:
        if self.summary is None:
            p = self.pool
            tele = self.telemetry or p.telemetry or {}
            per_scu = None
            if p.price is not None and p.scu:
                c = p.capacity
                per_scu = round(p.price.per_hour(c.cpus, c.gpus, c.memory_bytes) / p.scu, 6)
            self.summary = PoolSummary(
                cpi=p.cpi,
                provider=p.provider,
                name=p.name,
                region=p.region,
                backend=p.backend,
                status=p.status,
                labels=p.labels,
                capacity=p.capacity,
                free=self.free,
                accelerators=self.accelerators,
                cpu_arch=sorted({m.arch for m in p.machines if m.arch}),
                price=p.price,
                price_per_scu_hour=per_scu,
                carbon_intensity=p.carbon_intensity,
                scu=p.scu,
                cpu_percent=_float(tele.get("cpu_percent")),
                running_jobs=_int(tele.get("running_jobs")),
                queued_jobs=_int(tele.get("queued_jobs")),
                last_heartbeat_at=self.last_contact or p.last_heartbeat_at,
            )
        return self.summary

    def value(self, key: str, query: Query) -> float | None:
        p = self.pool
        if key == "cpus":
            return self.free.cpus
        if key == "gpus":
            return float(self.free.gpus)
        if key == "mem":
            return float(self.free.memory_bytes)
        if key == "gpumem":
            return float(self.max_device_memory)
        if key == "scu":
            return p.scu
        if key == "carbon":
            return p.carbon_intensity
        if key == "price":
            if p.price is None:
                return None
            return p.price.gpu_hour if query.gpus > 0 else p.price.cpu_hour
        return None

    def text(self, key: str) -> tuple[str, ...]:
        p = self.pool
        simple = {
            "region": p.region,
            "backend": p.backend,
            "status": p.status.value,
            "name": p.name,
            "provider": p.provider.rsplit(":", 1)[-1],
        }
        if key in simple:
            return (simple[key].lower(),)
        if key == "vendor":
            return tuple(self.vendors)
        if key == "arch":
            return tuple(self.archs)
        if key == "kind":
            return tuple(self.kinds)
        if key == "model":
            return self.models
        if key.startswith("label."):
            v = p.labels.get(key[6:])
            return () if v is None else (v.lower(),)
        return ()

    def matches(self, query: Query) -> bool:
        return all(self._holds(t, query) for t in query.terms)

    def listed(self, query: Query, include_all: bool) -> bool:
        """What a listing shows: online pools only, unless all or a status term is asked."""
        shown = include_all or query.wants("status") is not None
        if not shown and self.pool.status is not PoolStatus.online:
            return False
        return self.matches(query)

    def _holds(self, t: Term, query: Query) -> bool:
        if t.words:
            have = self.text(t.key)
            if t.key == "model":  # "a100" finds "NVIDIA A100-SXM4-80GB"
                hit = any(w in h for w in t.words for h in have)
            else:
                hit = any(w in have for w in t.words)
            return hit if t.op == "=" else not hit
        v = self.value(t.key, query)
        return v is not None and OPS[t.op](v, t.number)


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) else None


@dataclass(eq=False)  # identity: each subscriber is its own connection
class Subscriber:
    query: Query
    include_all: bool = False
    queue: asyncio.Queue[PoolSummary | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE)
    )
    shown: set[str] = field(default_factory=set)


class LiveIndex:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.subscribers: set[Subscriber] = set()
        self.loaded_at = 0.0
        self._columns: Columns | None = None  # rebuilt lazily after pools come or go

    def load(self, pools: list[Pool]) -> None:
        seen = set()
        for p in pools:
            seen.add(p.cpi)
            self.put(p)
        for cpi in set(self.entries) - seen:
            del self.entries[cpi]
            self._columns = None
        self.loaded_at = time.monotonic()

    def stale(
        self, states: dict[str, tuple[float, int, int, str]]
    ) -> tuple[list[tuple[str, Capacity, PoolStatus]], list[str]]:
        """Which of these states differ from the index, and which pools it does not know
        (registered through another replica), for the caller to apply and load."""
        changed, unknown = [], []
        for cpi, state in states.items():
            entry = self.entries.get(cpi)
            if entry is None:
                unknown.append(cpi)
                continue
            a, st = entry.pool.allocated, entry.pool.status
            if state != (a.cpus, a.memory_bytes, a.gpus, st.value):
                cpus, mem, gpus, status = state
                alloc = Capacity(cpus=max(0.0, cpus), memory_bytes=max(0, mem), gpus=max(0, gpus))
                changed.append((cpi, alloc, PoolStatus(status)))
        return changed, unknown

    def put(self, pool: Pool) -> None:
        """Adds or replaces a pool, telling subscribers when what they see has changed."""
        old = self.entries.get(pool.cpi)
        entry = Entry.of(pool)
        self.entries[pool.cpi] = entry
        self._columns = None
        if old is None or _visible(old.pool) != _visible(pool):
            self._publish(entry)

    def allocation(self, cpi: str, allocated: Capacity, status: PoolStatus) -> None:
        """A placement, a release or a status change: cheap, and published if visible."""
        entry = self.entries.get(cpi)
        if entry is None:
            return
        pool = entry.pool.model_copy(update={"allocated": allocated, "status": status})
        self.put_entry(entry, pool)

    def heartbeat(self, cpi: str, telemetry: dict[str, Any], status: PoolStatus) -> None:
        entry = self.entries.get(cpi)
        if entry is None:
            return
        if entry.pool.status is not status:  # visible: through the full path
            pool = entry.pool.model_copy(update={"status": status})
            self.put_entry(entry, pool)
            entry = self.entries[cpi]
        entry.telemetry, entry.last_contact, entry.summary = telemetry, _now(), None

    def put_entry(self, old: Entry, pool: Pool) -> None:
        """Replaces a pool whose inventory did not change, without re-deriving it."""
        entry = Entry(
            pool,
            pool.free,
            old.accelerators,
            old.vendors,
            old.models,
            old.archs,
            old.kinds,
            old.max_device_memory,
        )
        self.entries[pool.cpi] = entry
        cols = self._columns
        if cols is not None and (i := cols.pos.get(pool.cpi)) is not None:
            cols.update(i, entry)
        if _visible(old.pool) != _visible(pool):
            self._publish(entry)

    def columns(self) -> Columns:
        if self._columns is None:
            self._columns = Columns(list(self.entries.values()))
        return self._columns

    def query(
        self, query: Query, order: tuple[str, bool] | None, include_all: bool, limit: int
    ) -> tuple[list[PoolSummary], int]:
        cols = self.columns()
        found = cols.select(query, include_all)
        rows = cols.ordered(found, order, query, limit)
        return [cols.entries[i].to_summary() for i in rows], len(found)

    def subscribe(self, query: Query, include_all: bool = False) -> Subscriber:
        sub = Subscriber(query, include_all)
        self.subscribers.add(sub)
        for e in self.entries.values():
            if e.listed(query, include_all) and not sub.queue.full():
                sub.shown.add(e.pool.cpi)
                sub.queue.put_nowait(e.to_summary())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, entry: Entry) -> None:
        """A pool that stops matching is sent once more, so the subscriber sees it go."""
        for sub in list(self.subscribers):
            match = entry.listed(sub.query, sub.include_all)
            if not match and entry.pool.cpi not in sub.shown:
                continue
            if match:
                sub.shown.add(entry.pool.cpi)
            elif not entry.matches(sub.query):  # a pool shown is followed down to offline
                sub.shown.discard(entry.pool.cpi)
            try:
                sub.queue.put_nowait(entry.to_summary())
            except asyncio.QueueFull:
                self.subscribers.discard(sub)  # too slow to follow: it is told and dropped
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                sub.queue.put_nowait(None)


def _visible(p: Pool) -> tuple[object, ...]:
    """What a subscriber is told about: presence, status and free capacity."""
    return (p.status, p.free.cpus, p.free.gpus, p.free.memory_bytes)


def _now() -> datetime:
    return datetime.now(UTC)
