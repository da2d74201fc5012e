"""The node's relay for function calls: per session, calls waiting for a worker and
results waiting for the client, in memory.

Calls are short-lived and the client holds every one it sent until it has the result, so
nothing here is persisted: a node restart fails the open sessions, and their clients say
so. Workers take calls in batches and hand results back in batches, so a map over ten
thousand calls is a few dozen round trips, not twenty thousand.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from computenet.model.functions import Call, Result

# A client polls for results every few seconds while it lives (an idle Executor too),
# and between polls may fetch large results: one silent this long has gone without
# closing its session, whose workers then stop.
CLIENT_GONE = max(1.0, float(os.environ.get("CNET_FN_CLIENT_GONE", "900")))
MAX_WAITING = 100_000  # calls a session holds for its workers; the client keeps the rest
MAX_WAITING_BYTES = 64 << 20  # of inline payloads among them


@dataclass
class SessionState:
    id: str
    tenant: str
    token_hash: str
    runtime: dict[str, str]
    jobs: list[str] = field(default_factory=list)
    calls: deque[Call] = field(default_factory=deque)
    results: deque[Result] = field(default_factory=deque)
    calls_ready: asyncio.Event = field(default_factory=asyncio.Event)
    results_ready: asyncio.Event = field(default_factory=asyncio.Event)
    workers: dict[str, dict[str, str]] = field(default_factory=dict)
    error: str = ""
    client_seen: float = field(default_factory=time.monotonic)  # workers' polls do not count

    def check(self, token: str) -> bool:
        return hmac.compare_digest(self.token_hash, _hash(token))

    waiting_bytes: int = 0

    def room(self, calls: list[Call]) -> bool:
        """Whether ``calls`` fit beside those waiting. A batch always fits an empty queue,
        so a client that waits for room is never refused for good."""
        n = _inline(calls)
        return not self.calls or (
            len(self.calls) + len(calls) <= MAX_WAITING
            and self.waiting_bytes + n <= MAX_WAITING_BYTES
        )

    def push_calls(self, calls: list[Call]) -> None:
        self.calls.extend(calls)
        self.waiting_bytes += _inline(calls)
        self.calls_ready.set()

    def take_calls(self, most: int) -> list[Call]:
        out = [self.calls.popleft() for _ in range(min(most, len(self.calls)))]
        self.waiting_bytes -= _inline(out)
        if not self.calls:
            self.calls_ready.clear()
        return out

    def push_results(self, results: list[Result]) -> None:
        self.results.extend(results)
        self.results_ready.set()

    def take_results(self, most: int) -> list[Result]:
        out = [self.results.popleft() for _ in range(min(most, len(self.results)))]
        if not self.results:
            self.results_ready.clear()
        return out

    def hello(self, worker: str, runtime: dict[str, str]) -> None:
        """A worker whose Python differs from the client's cannot load what it sends."""
        self.workers[worker] = runtime
        diff = mismatch(self.runtime, runtime)
        if diff and not self.error:
            self.error = "runtime mismatch on the pool (" + "; ".join(diff) + ")"
            self.results_ready.set()


def _inline(calls: list[Call]) -> int:
    """Bytes of inline payload: what a session's queue holds in the node's memory."""
    return sum(len(c.payload or "") for c in calls)


class Broker:
    def __init__(self) -> None:
        self.sessions: dict[str, SessionState] = {}

    def open(self, tenant: str, runtime: dict[str, str]) -> tuple[SessionState, str]:
        token = secrets.token_urlsafe(24)
        s = SessionState("s-" + secrets.token_hex(8), tenant, _hash(token), dict(runtime))
        self.sessions[s.id] = s
        return s, token

    def get(self, sid: str) -> SessionState | None:
        return self.sessions.get(sid)

    def close(self, sid: str) -> SessionState | None:
        return self.sessions.pop(sid, None)

    def seen(self, tenant: str) -> None:
        """A tenant's client moves blobs: its sessions' clients are alive, if busy."""
        now = time.monotonic()
        for s in self.sessions.values():
            if s.tenant == tenant:
                s.client_seen = now

    def abandoned(self) -> list[SessionState]:
        """Sessions whose client has stopped polling (its process ended, or was killed)."""
        cutoff = time.monotonic() - CLIENT_GONE
        return [s for s in self.sessions.values() if s.client_seen < cutoff]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mismatch(client: dict[str, str], pool: dict[str, str]) -> list[str]:
    """What differs in what cloudpickle needs to match: the Python minor version and
    cloudpickle itself."""
    return [
        f"{k}: client {v}, pool {pool.get(k, 'none')}"
        for k, v in sorted(client.items())
        if k in ("python", "cloudpickle") and pool.get(k) != v
    ]
