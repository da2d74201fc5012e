"""Heartbeats at volume: checked and applied in memory, persisted in batches.

A heartbeat changes a pool's telemetry and its time of last contact. Writing each one
through the store would cap a node at the database's commit rate; instead the newest
heartbeat of each pool is written once a second. The sequence number that stops replays
is checked against memory (loaded from the store the first time a pool is heard from),
so a heartbeat is refused or accepted without touching the disk. A pool that comes back
from suspect or offline takes the slow path, because the scheduler must learn of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from computenet.model import AttemptRef, Heartbeat, PoolStatus
from computenet.node.errors import Conflict
from computenet.node.metrics import HEARTBEATS
from computenet.node.store import jobs as job_store
from computenet.node.store import pools as pool_store

if TYPE_CHECKING:
    from computenet.node.runtime import Node

log = logging.getLogger("computenet.node")
FLUSH_EVERY = 1.0


class Beats:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.seq: dict[str, int] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        # What each pool's latest heartbeat said it runs, and when it came.
        self.holding: dict[str, tuple[float, frozenset[str]]] = {}

    async def accept(self, cpi: str, hb: Heartbeat, telemetry: dict[str, Any]) -> None:
        last = self.seq.get(cpi)
        if last is None:
            last = await self.node.reading(pool_store.last_seq, cpi)
        if hb.seq <= last:
            raise Conflict(
                f"heartbeat seq {hb.seq} is not newer than {last}: replayed or reordered",
                field="seq",
            )
        self.seq[cpi] = hb.seq
        self.pending[cpi] = {
            "b_cpi": cpi,
            "b_seq": hb.seq,
            "b_at": time.time(),
            "b_telemetry": telemetry,
        }

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = list(self.pending.values()), {}
        try:
            await self.node.writing(pool_store.record_beats, batch)
        except Exception:
            for b in batch:  # keep the newest: a later beat may already be pending
                self.pending.setdefault(b["b_cpi"], b)
            raise

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                await self.flush()
            except Exception:
                log.exception("persisting heartbeats failed")


async def take(node: Node, pool: str, hb: Heartbeat) -> list[AttemptRef]:
    """One verified heartbeat, however it arrived; returns the attempts the pool must stop.

    A pool back from suspect or offline (or not yet in this replica's index) goes through
    the store at once, so that the scheduler can use it again.
    """
    telemetry = hb.sample.model_dump(mode="json")
    entry = node.index.entries.get(pool)
    if entry is None or entry.pool.status is not PoolStatus.online:
        node.beats.pending.pop(pool, None)
        came_back = await node.writing(pool_store.heartbeat, pool, hb)
        node.beats.seq[pool] = hb.seq
        if came_back:
            node.events.schedule.set()
            await node.reindex([pool])
    else:
        await node.beats.accept(pool, hb, telemetry)
    HEARTBEATS.inc()
    node.beats.holding[pool] = (time.time(), frozenset(hb.running))
    node.index.heartbeat(pool, telemetry, PoolStatus.online)
    if not hb.running:
        return []
    return await node.reading(job_store.stale_attempts, pool, hb.running)
