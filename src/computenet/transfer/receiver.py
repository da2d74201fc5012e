"""The receiving end, the same on the data server (put) and in the client (get).

Each chunk is checked against the manifest's BLAKE3 hash before it is written with
``pwrite`` into a partial file next to its destination. A file is renamed into place
only when every chunk is in and, with verify on, reads back as the manifest says. A
partial file left by an interrupted transfer is kept: its chunks that still hash right
are not asked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from computenet.model.transfer import Manifest, ManifestEntry, SyncLevel, TransferCounters
from computenet.transfer import wire
from computenet.transfer.faults import Faults
from computenet.transfer.manifest import digest, hash_chunks
from computenet.transfer.paths import open_part, part_of
from computenet.transfer.wire import TransferError

Progress = Callable[[int], None]


@dataclass
class Plan:
    need: list[list[int]]
    skip: list[int]
    present: int = 0
    present_bytes: int = 0

    def wire(self) -> dict[str, object]:
        return {
            "need": self.need,
            "skip": self.skip,
            "present": self.present,
            "present_bytes": self.present_bytes,
        }


def unchanged(final: Path, e: ManifestEntry, sync: SyncLevel, chunk: int) -> bool:
    """Whether the file already at the destination may stay, at this sync level."""
    if sync is SyncLevel.none:
        return False
    try:
        st = final.stat()
    except FileNotFoundError:
        return False
    if sync is SyncLevel.exists:
        return True
    if st.st_size != e.size:
        return False
    if sync is SyncLevel.size:
        return True
    if sync is SyncLevel.mtime:
        return st.st_mtime_ns // 10**9 == e.mtime_ns // 10**9
    return hash_chunks(final, e.size, chunk) == e.chunks


@dataclass
class Receiver:
    manifest: Manifest
    finals: list[Path]
    dirs: list[Path]
    sync: SyncLevel = SyncLevel.none
    counters: TransferCounters = field(default_factory=TransferCounters)
    progress: Progress | None = None
    faults: Faults | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        self._left: dict[int, set[int]] = {}
        self._skip: set[int] = set()
        self._arrived = 0

    @property
    def complete(self) -> bool:
        return not any(self._left.values())

    def plan(self) -> Plan:
        """Decides what must move: files the sync level keeps are skipped, chunks that a
        partial file already holds are not asked for."""
        chunk = self.manifest.chunk_size
        plan = Plan([], [])
        for i, (e, final) in enumerate(zip(self.manifest.files, self.finals, strict=True)):
            if final.is_dir():
                raise TransferError(f"{final} is a directory; a file cannot replace it")
            if unchanged(final, e, self.sync, chunk):
                plan.skip.append(i)
                plan.need.append([])
                self._skip.add(i)
                self.counters.files_skipped += 1
                self.counters.bytes_skipped += e.size
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            part = part_of(final)
            have: set[int] = set()
            if part.is_file() and not part.is_symlink():
                got = hash_chunks(part, min(part.stat().st_size, e.size), chunk)
                have = {j for j, h in enumerate(got) if h == e.chunks[j]}
            fd = open_part(part)
            try:
                os.ftruncate(fd, e.size)
            finally:
                os.close(fd)
            need = [j for j in range(len(e.chunks)) if j not in have]
            plan.need.append(need)
            self._left[i] = set(need)
            plan.present += len(have)
            plan.present_bytes += sum(min(chunk, e.size - j * chunk) for j in have)
        self.counters.chunks_present += plan.present
        self.counters.bytes_skipped += plan.present_bytes
        return plan

    def accept(self, f: int, c: int, data: bytes | memoryview) -> wire.Status:
        left = self._left.get(f)
        if left is None or c >= len(self.manifest.files[f].chunks):
            return wire.Status.UNKNOWN
        if self.faults is not None:
            with self._lock:
                self._arrived += 1
                ordinal = self._arrived
            data = self.faults.tamper(ordinal, bytes(data))
        if digest(data) != self.manifest.files[f].chunks[c]:
            with self._lock:
                self.counters.faults += 1
                self.counters.retries += 1  # the sender puts it back in its queue
            return wire.Status.BAD_HASH
        with self._lock:
            fd = self._fds.get(f)
            if fd is None:
                fd = self._fds[f] = open_part(part_of(self.finals[f]))
        os.pwrite(fd, data, c * self.manifest.chunk_size)
        with self._lock:
            if c in left:
                left.discard(c)
                self.counters.chunks += 1
                self.counters.bytes += len(data)
            if not left:
                os.close(self._fds.pop(f))
        if self.progress is not None:
            self.progress(len(data))
        if self.faults is not None:
            self.faults.verified()
        return wire.Status.OK

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One data stream: chunks in, an ACK for each, until the sender closes it."""
        while True:
            try:
                kind, payload = await wire.read_frame(reader)
            except asyncio.IncompleteReadError:
                return
            if kind is not wire.Kind.DATA or len(payload) < wire.DATA.size:
                raise wire.WireError(f"expected DATA on a data stream, got {kind.name}")
            f, c = wire.DATA.unpack_from(payload)
            data = memoryview(payload)[wire.DATA.size :]
            status = await asyncio.to_thread(self.accept, f, c, data)
            wire.send(writer, wire.Kind.ACK, wire.ACK.pack(f, c, status))
            await writer.drain()

    def commit(self, verify: bool = True) -> None:
        """Renames each finished file into place (atomically, one by one), after reading
        it back when ``verify`` is on."""
        if not self.complete:
            missing = sum(len(x) for x in self.files_left().values())
            raise TransferError(f"{missing} chunks are still missing; run the copy again")
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        chunk = self.manifest.chunk_size
        for i, (e, final) in enumerate(zip(self.manifest.files, self.finals, strict=True)):
            if i in self._skip:
                continue
            part = part_of(final)
            if not e.chunks:
                os.close(open_part(part))
            if verify and hash_chunks(part, e.size, chunk) != e.chunks:
                part.unlink(missing_ok=True)
                raise TransferError(f"{final} did not read back as sent; it was removed")
            os.chmod(part, e.mode & 0o7777)
            os.utime(part, ns=(e.mtime_ns, e.mtime_ns))
            os.replace(part, final)
            self.counters.files += 1

    def files_left(self) -> dict[int, set[int]]:
        return {f: left for f, left in self._left.items() if left}

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
