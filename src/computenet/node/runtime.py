"""The running node: settings, store, events and the scheduler, shared by all routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from anyio import to_thread

from computenet.model import Capacity, PoolStatus, Token
from computenet.node.beats import Beats
from computenet.node.index import LiveIndex
from computenet.node.sched.binder import PassResult, schedule_pass
from computenet.node.sched.framework import Profile
from computenet.node.sched.profile import default_profile
from computenet.node.settings import Settings
from computenet.node.store import jobs as job_store
from computenet.node.store import pools as pool_store
from computenet.node.store import tokens as token_store
from computenet.node.store.db import Store

T = TypeVar("T")
log = logging.getLogger("computenet.node")


class Node:
    def __init__(self, settings: Settings) -> None:
        from computenet.node.events import Events

        self.settings = settings
        self.store = Store(settings.database_url)
        self.events = Events()
        self.profile: Profile = default_profile(settings.weights)
        self.profile.default_goal = settings.goal
        self.profile.region, self.profile.latency = settings.region, settings.latency
        # SQLite has one writer; more threads would only queue on its lock.
        self._limiter = anyio.CapacityLimiter(4 if self.store.sqlite else 16)
        self._token_cache: dict[str, tuple[float, Token]] = {}
        self._sched_lock = asyncio.Lock()
        self._pool_keys: dict[str, tuple[str, str | None]] = {}  # key, registering token
        self.index = LiveIndex()
        self._index_since = 0.0
        from computenet.node.federation import Federation

        self.federation = Federation(self)
        from computenet.node.calls import Broker

        self.broker = Broker()
        from computenet.node.forward import Forwarder

        self.forwarder = Forwarder(self)
        settings.code = self.federation.code  # a delegated node mints under its delegation
        self.beats = Beats(self)
        self.started_at = time.time()

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await to_thread.run_sync(fn, *args, limiter=self._limiter)

    def read(self, fn: Callable[..., T], *args: Any) -> Callable[[], T]:
        def run() -> T:
            with self.store.read() as conn:
                return fn(conn, *args)

        return run

    def write(self, fn: Callable[..., T], *args: Any) -> Callable[[], T]:
        def run() -> T:
            with self.store.write() as conn:
                return fn(conn, *args)

        return run

    async def reading(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.db(self.read(fn, *args))

    async def writing(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.db(self.write(fn, *args))

    # --- auth -------------------------------------------------------------------------

    async def authenticate(self, presented: str) -> Token:
        """Tokens are cached briefly: revocation takes effect within ``TOKEN_TTL`` seconds."""
        hit = self._token_cache.get(presented)
        now = time.monotonic()
        if hit is not None and now - hit[0] < TOKEN_TTL:
            return hit[1]
        token = await self.reading(token_store.authenticate, presented)
        if len(self._token_cache) > 10_000:
            self._token_cache.clear()
        self._token_cache[presented] = (now, token)
        return token

    def forget_tokens(self) -> None:
        self._token_cache.clear()

    async def pool_key(self, cpi: str) -> str | None:
        """Pool keys change through registration, which updates this cache, and end with
        the token the pool registered with: revoked here, its pools are forgotten at
        once; revoked by another replica, within ``INDEX_REFRESH``."""
        held = self._pool_keys.get(cpi)
        if held is None:
            held = await self.reading(pool_store.public_key, cpi)
            if held is None:
                return None
            self._pool_keys[cpi] = held
        return held[0]

    def remember_pool_key(self, cpi: str, key: str, token_id: str | None) -> None:
        self._pool_keys[cpi] = (key, token_id)

    def forget_pool_keys(self, token_ids: set[str]) -> None:
        for cpi in [c for c, (_, t) in self._pool_keys.items() if t in token_ids]:
            del self._pool_keys[cpi]

    # --- scheduling -------------------------------------------------------------------

    async def schedule_now(self) -> PassResult:
        async with self._sched_lock:
            result = await self.writing(schedule_pass, self.profile)
        if result.placed:
            self.events.pools.notify_many(result.pools)
            self.events.jobs.notify_many(set(result.placed))
            await self.reindex(result.pools)
        return result

    # --- live index ---------------------------------------------------------------------

    async def load_index(self) -> None:
        self._index_since = time.time() - INDEX_OVERLAP
        self.index.load(await self.reading(pool_store.list_all))

    async def reindex(self, cpis: set[str] | list[str]) -> None:
        found = await self.reading(pool_store.allocations, list(cpis))
        await self._apply([(cpi, alloc, status) for cpi, (alloc, status) in found.items()])

    async def _apply(self, changes: list[tuple[str, Capacity, PoolStatus]]) -> None:
        """In slices, so that a whole region going offline at once does not stall the
        requests this event loop is also answering."""
        for i, (cpi, alloc, status) in enumerate(changes, 1):
            self.index.allocation(cpi, alloc, status)
            if i % INDEX_SLICE == 0:
                await asyncio.sleep(0)

    async def index_loop(self) -> None:
        """Picks up what other replicas changed: the allocation and status of each pool
        changed lately, and the full record of pools this replica has not seen.

        "Lately" overlaps the previous refresh generously, so that a write committed a
        little after its change time, or stamped by a replica whose clock runs behind,
        is still read.
        """
        while True:
            await asyncio.sleep(INDEX_REFRESH)
            try:
                now = time.time()
                revoked = await self.reading(token_store.revoked_since, self._index_since)
                self.forget_pool_keys(set(revoked))  # another replica's revocation
                states = await self.reading(pool_store.states, self._index_since)
                self._index_since = now - INDEX_OVERLAP
                items, unknown = list(states.items()), []
                for i in range(0, len(items), INDEX_SLICE):
                    changed, new = self.index.stale(dict(items[i : i + INDEX_SLICE]))
                    unknown += new
                    await self._apply(changed)
                    await asyncio.sleep(0)
                if unknown:
                    for pool in await self.reading(pool_store.get_many, unknown):
                        self.index.put(pool)
            except Exception:
                log.exception("refreshing the live index failed")

    async def scheduler_loop(self) -> None:
        """Runs a pass when woken (submit, release, new pool) and at least every second."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.events.schedule.wait(), 1.0)
            # A burst of submissions is placed in one pass, not one pass each.
            await asyncio.sleep(GATHER)
            self.events.schedule.clear()
            try:
                await self.schedule_now()
            except Exception:
                log.exception("scheduling pass failed")
                await asyncio.sleep(1.0)

    async def liveness_loop(self) -> None:
        """Judges pools by their heartbeats; work on a pool that went offline is requeued."""
        s = self.settings
        while True:
            await asyncio.sleep(min(s.heartbeat_interval, s.suspect_after / 3))
            try:
                await self.check_liveness()
            except Exception:
                log.exception("liveness check failed")

    async def redeliver_lost(self) -> None:
        grace = max(LOST_AFTER, 2 * self.settings.heartbeat_interval)
        lost = await self.reading(job_store.lost_assignments, self.beats.holding, grace)
        if lost:
            await self.writing(job_store.redeliver, lost)
            hit = {x["b_pool"] for x in lost}
            log.warning("%d assignment(s) lost on the way to %s; sent again", len(lost), hit)
            self.events.pools.notify_many(hit)

    async def check_liveness(self) -> None:
        s = self.settings
        await self.beats.flush()  # judge by the latest contact, not the last batch written
        await self.redeliver_lost()
        changed = await self.writing(pool_store.judge_liveness, s.suspect_after, s.offline_after)
        if changed:
            await self.reindex(set(changed))
        for cpi, status in changed.items():
            log.warning("pool %s is %s: no heartbeat", cpi, status.value)
            if status is not PoolStatus.offline:
                continue
            moved = await self.writing(job_store.requeue_pool, cpi, s.max_attempts)
            if moved:
                await self.reindex([cpi])
                log.warning("requeued %d job(s) from %s", len(moved), cpi)
                self.events.jobs.notify_many(set(moved))
                self.events.schedule.set()


TOKEN_TTL = 2.0
INDEX_REFRESH = 5.0
INDEX_OVERLAP = 10.0
INDEX_SLICE = 500
LOST_AFTER = 10.0
GATHER = 0.002  # seconds a wake-up waits for company before doing the work
