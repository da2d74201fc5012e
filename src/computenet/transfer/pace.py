"""A cap on the rate at which copies take data in, shared by all of them."""

from __future__ import annotations

import threading
import time


class Pace:
    """Each chunk that lands books ``n / rate`` seconds on one clock, and its stream
    waits out the booking before it reads on; so N streams, or N copies, that share
    one ``Pace`` move no faster together than ``rate``, and the sender is held back by
    TCP's own flow control."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._until = 0.0

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._until = max(self._until, now) + n / self.rate
            wait = self._until - now
        time.sleep(wait)
