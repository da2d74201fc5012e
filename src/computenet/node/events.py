"""In-process wake-ups for long polls and streams.

Waiters never trust a wake-up as data: they re-read the store. A missed wake-up (another
replica changed the row) only costs the poll interval, never correctness.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Topic:
    """A version counter per key with waiters; cheap when nobody listens."""

    def __init__(self) -> None:
        self._versions: dict[str, int] = defaultdict(int)
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)

    def version(self, key: str) -> int:
        return self._versions.get(key, 0)

    def notify(self, key: str) -> None:
        self._versions[key] += 1
        for fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.set_result(None)

    def notify_many(self, keys: set[str] | list[str]) -> None:
        for k in keys:
            self.notify(k)

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, key: str, seen: int, timeout: float) -> bool:
        """Returns True when ``key`` moved past version ``seen`` within ``timeout``."""
        if self._versions.get(key, 0) != seen:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[key].append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[key]


class Events:
    def __init__(self) -> None:
        self.pools = Topic()  # key: pool CPI; new directives for it
        self.jobs = Topic()  # key: job id; state or logs changed
        self.schedule = asyncio.Event()  # something may now be placeable
        self.closing = asyncio.Event()  # the node is stopping: long polls answer now

    def close(self) -> None:
        """Long polls and streams end at once, rather than hold the node's stop until its
        grace runs out and they are cancelled mid-answer."""
        self.closing.set()
        self.pools.wake_all()
        self.jobs.wake_all()

    async def pause(self, event: asyncio.Event, timeout: float) -> None:
        """Until ``event`` is set, the node starts stopping, or ``timeout`` passes."""
        if event.is_set() or self.closing.is_set():
            return
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.closing.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
