"""The sending end, the same in the client (put) and on the data server (get).

Chunks wait in one queue that every stream draws from, so a slow stream never holds the
others back. Each stream keeps a window of chunks in flight and reads the receiver's
ACKs as they come: 10,000 small files cost 10,000 frames, not 10,000 round trips. A
chunk the receiver refuses goes back to the front of the queue; a stream that breaks
hands its chunks to the streams left. Without TLS a chunk of at least ``SMALL`` bytes
goes from the file to the socket by ``sendfile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from computenet.model.transfer import Manifest, TransferCounters
from computenet.transfer import wire
from computenet.transfer.faults import Faults
from computenet.transfer.paths import open_read
from computenet.transfer.receiver import Progress
from computenet.transfer.wire import TransferError

WINDOW = 128
WINDOW_BYTES = 32 << 20
SMALL = 1 << 20
MAX_ATTEMPTS = 5


@dataclass
class Sender:
    manifest: Manifest
    sources: list[Path]
    need: list[list[int]]
    counters: TransferCounters = field(default_factory=TransferCounters)
    progress: Progress | None = None
    faults: Faults | None = None

    def __post_init__(self) -> None:
        self.pending: deque[tuple[int, int]] = deque(
            (f, c) for f, chunks in enumerate(self.need) for c in chunks
        )
        self.remaining = len(self.pending)
        self.error: Exception | None = None
        self.streams = 0
        self._attempts: Counter[tuple[int, int]] = Counter()
        self._wakes: set[asyncio.Event] = set()
        self._sent = 0
        self.done = asyncio.Event()
        if not self.remaining:
            self.done.set()

    def length(self, f: int, c: int) -> int:
        size, chunk = self.manifest.files[f].size, self.manifest.chunk_size
        return min(chunk, size - c * chunk)

    def notify(self) -> None:
        for w in self._wakes:
            w.set()

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Sends from the shared queue until every chunk is acknowledged."""
        inflight: dict[tuple[int, int], int] = {}
        wake = asyncio.Event()
        self._wakes.add(wake)
        self.streams += 1
        acks = asyncio.create_task(self._acks(reader, inflight))
        files = _Files(self.sources)
        try:
            while True:
                wake.clear()
                if self.remaining == 0 or self.error is not None:
                    break
                if acks.done():
                    acks.result()
                    raise ConnectionResetError("the receiver closed the stream")
                if (
                    self.pending
                    and len(inflight) < WINDOW
                    and sum(inflight.values()) < WINDOW_BYTES
                ):
                    key = self.pending.popleft()
                    inflight[key] = self.length(*key)
                    await self._send(writer, key, inflight[key], files)
                    continue
                waiter = asyncio.ensure_future(wake.wait())
                await asyncio.wait([acks, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        except (OSError, asyncio.IncompleteReadError, wire.WireError, wire.Refused) as e:
            self._lost(inflight, e)
        finally:
            self._wakes.discard(wake)
            acks.cancel()
            files.close()
            with contextlib.suppress(Exception):
                writer.close()
            self.streams -= 1
            if self.streams == 0 and self.remaining and self.error is None:
                self.error = TransferError("every stream was lost before the transfer finished")
                self.done.set()

    def _lost(self, inflight: dict[tuple[int, int], int], why: Exception) -> None:
        """A broken stream: what it had in flight goes to the streams that are left."""
        self.counters.faults += 1
        self.counters.retries += len(inflight)
        self.pending.extendleft(inflight)
        inflight.clear()
        if isinstance(why, wire.Refused):
            self.error = TransferError(str(why))
            self.done.set()
        self.notify()

    async def _send(
        self, writer: asyncio.StreamWriter, key: tuple[int, int], n: int, files: _Files
    ) -> None:
        f, c = key
        offset = c * self.manifest.chunk_size
        head = wire.header(wire.Kind.DATA, wire.DATA.size + n) + wire.DATA.pack(f, c)
        self._sent += 1
        tamper = self.faults is not None and self.faults.corrupt_at == self._sent
        tls = writer.get_extra_info("sslcontext") is not None
        if n < SMALL or tamper or tls:
            data = os.pread(files.fd(f), n, offset)
            if len(data) < n:
                raise TransferError(f"{self.sources[f]} shrank while it was being sent")
            if tamper and self.faults is not None:
                data = self.faults.tamper(self._sent, data)
            writer.write(head + data if n < SMALL else head)
            if n >= SMALL:
                writer.write(data)
            await writer.drain()
            return
        writer.write(head)
        await writer.drain()
        loop = asyncio.get_running_loop()
        await loop.sendfile(writer.transport, files.file(f), offset, n)

    async def _acks(
        self, reader: asyncio.StreamReader, inflight: dict[tuple[int, int], int]
    ) -> None:
        while True:
            kind, payload = await wire.read_frame(reader)
            if kind is wire.Kind.ERROR:
                raise wire.Refused(payload.decode(errors="replace"))
            if kind is not wire.Kind.ACK:
                raise wire.WireError(f"expected ACK, got {kind.name}")
            f, c, status = wire.ACK.unpack(payload)
            n = inflight.pop((f, c), None)
            if n is None:
                continue
            if status == wire.Status.OK:
                self.remaining -= 1
                self.counters.chunks += 1
                self.counters.bytes += n
                if self.progress is not None:
                    self.progress(n)
                if self.faults is not None:
                    self.faults.verified()
                if self.remaining == 0:
                    self.done.set()
            else:
                self._attempts[(f, c)] += 1
                self.counters.faults += 1
                self.counters.retries += 1
                if self._attempts[(f, c)] >= MAX_ATTEMPTS:
                    name = self.manifest.files[f].path or self.sources[f].name
                    self.error = TransferError(
                        f"chunk {c} of {name} failed verification {MAX_ATTEMPTS} times; "
                        "is the file changing while it is copied?"
                    )
                    self.done.set()
                self.pending.appendleft((f, c))
            self.notify()


class _Files:
    """One stream's open source files: its own, because ``sendfile`` moves the position."""

    def __init__(self, sources: list[Path]) -> None:
        self.sources = sources
        self._open: dict[int, BinaryIO] = {}

    def file(self, f: int) -> BinaryIO:
        fh = self._open.get(f)
        if fh is None:
            if len(self._open) >= 8:
                self.close()
            fh = self._open[f] = os.fdopen(open_read(self.sources[f]), "rb", buffering=0)
        return fh

    def fd(self, f: int) -> int:
        return self.file(f).fileno()

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()
