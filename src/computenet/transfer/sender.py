"""The sending end, the same in the client (put) and on the data server (get).

Chunks wait in one queue that every stream draws from, so a slow stream never holds the
others back. Each stream is a blocking socket on a thread of its own; it keeps a window of
chunks in flight and reads the receiver's ACKs as they come: 10,000 small files cost
10,000 frames, not 10,000 round trips. A chunk the receiver refuses goes back to the
front of the queue; a stream that breaks hands its chunks to the streams left. Without TLS
a chunk of at least ``SMALL`` bytes goes from the file to the socket by ``sendfile``.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import stat
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from computenet.model.transfer import Manifest, TransferCounters
from computenet.transfer import compress, sockets, wire
from computenet.transfer.faults import Faults
from computenet.transfer.paths import open_read
from computenet.transfer.receiver import Progress
from computenet.transfer.sockets import Sock
from computenet.transfer.wire import TransferError

WINDOW = 128
WINDOW_BYTES = 32 << 20
SMALL = 1 << 20
MAX_ATTEMPTS = 5
WAIT = 0.5  # seconds between looks at the shared state while waiting
ACK_READ = 1 << 16
ACK_POLL = 32  # chunks in flight before a look for ACKs: a look per 100 KiB file costs


def need_limit(m: Manifest) -> int:
    """The most bytes a NEED for ``m`` can take, each chunk named once: a peer cannot make
    the other end read and parse 256 MiB of JSON for a file of one chunk."""
    chunks = sum(len(e.chunks) for e in m.files)
    return 4096 + 16 * (chunks + len(m.files))  # an index, a comma and a space, with room


@dataclass(frozen=True)
class Need:
    """A receiver's NEED, checked against the manifest it answers."""

    chunks: list[list[int]]  # per file, the chunk numbers to send
    skip: list[int]  # files the receiver keeps as they are
    present: int  # chunks it holds already
    present_bytes: int
    holes: int  # bytes of holes it makes itself


def checked_need(body: object, m: Manifest) -> Need:
    """A NEED, if it fits ``m``: one list per file, each of the file's chunk numbers in
    increasing order, none twice; the files it skips are named the same way, and its
    counts are whole numbers. Long for a large tree: off the loop."""
    frame: dict[str, object] = body if isinstance(body, dict) else {}
    need, skip = frame.get("need"), frame.get("skip", [])
    counts = [frame.get(k, 0) for k in ("present", "present_bytes", "holes")]
    if (
        not isinstance(skip, list)
        or not _increasing(skip, len(m.files))
        or not all(type(n) is int and n >= 0 for n in counts)
        or not isinstance(need, list)
        or len(need) != len(m.files)
        or not all(
            isinstance(n, list) and _increasing(n, len(e.chunks))
            for n, e in zip(need, m.files, strict=True)
        )
    ):
        raise wire.WireError("NEED does not match the manifest")
    present, present_bytes, holes = (int(n) for n in counts)  # type: ignore[call-overload]
    return Need(need, skip, present, present_bytes, holes)


def _increasing(xs: list[object], below: int) -> bool:
    """Whole numbers from 0 up to ``below``, each greater than the last."""
    return (
        all(type(x) is int for x in xs)
        and all(a < b for a, b in itertools.pairwise(xs))  # type: ignore[operator]
        and (not xs or (xs[0] >= 0 and xs[-1] < below))  # type: ignore[operator]
    )


@dataclass
class Sender:
    manifest: Manifest
    sources: list[str]
    need: list[list[int]]
    counters: TransferCounters = field(default_factory=TransferCounters)
    progress: Progress | None = None
    faults: Faults | None = None
    compress: bool = False

    def __post_init__(self) -> None:
        self.pending: deque[tuple[int, int]] = deque(
            (f, c) for f, chunks in enumerate(self.need) for c in chunks
        )
        self.remaining = len(self.pending)
        self.error: Exception | None = None
        self.streams = 0
        self._attempts: Counter[tuple[int, int]] = Counter()
        self._cv = threading.Condition()
        self._wire: dict[tuple[int, int], tuple[int, bool]] = {}  # bytes sent, compressed
        self._sent = 0
        self.done = threading.Event()
        if not self.remaining:
            self.done.set()

    def length(self, f: int, c: int) -> int:
        size, chunk = self.manifest.files[f].size, self.manifest.chunk_size
        return min(chunk, size - c * chunk)

    @property
    def finished(self) -> bool:
        return self.remaining == 0 or self.error is not None

    def name(self, f: int) -> str:
        """A file as the peer may be told of it: by its place in the copy, never by the
        sender's own directories."""
        return self.manifest.files[f].path or os.path.basename(self.sources[f])

    def stream(self, sock: Sock) -> None:
        """Sends from the shared queue until every chunk is acknowledged; blocking, on a
        thread of its own. ACKs are read between chunks on the same thread, so a TLS
        connection is never used from two threads."""
        inflight: dict[tuple[int, int], int] = {}
        files = _Files(self.sources, self.name)
        acks = bytearray()
        with self._cv:
            self.streams += 1
        try:
            while True:
                if len(inflight) >= ACK_POLL:
                    self._acks(sock, acks, inflight, 0)
                key = self._take(inflight)
                if key is not None:
                    self._send(sock, key, inflight[key], files)
                    continue
                if self.finished:
                    break
                if inflight:
                    self._acks(sock, acks, inflight, WAIT)
                else:
                    with self._cv:
                        if not self.finished and not self.pending:
                            self._cv.wait(WAIT)
        except (OSError, wire.WireError, wire.Refused) as e:
            self._lost(inflight, self._why(sock, acks, inflight, e))
        finally:
            files.close()
            sockets.shut(sock)
            with self._cv:
                self.streams -= 1
                if self.streams == 0 and self.remaining and self.error is None:
                    self.error = TransferError(
                        "every stream was lost before the transfer finished: "
                        "run the copy again to resume it"
                    )
                    self.done.set()
                self._cv.notify_all()

    def _why(
        self, sock: Sock, acks: bytearray, inflight: dict[tuple[int, int], int], e: Exception
    ) -> Exception:
        """Why a stream broke: the receiver's own reason where it sent one (an ERROR
        frame, then a close) before the write that failed."""
        if not isinstance(e, OSError):
            return e
        try:
            self._acks(sock, acks, inflight, 0)
        except wire.Refused as refused:
            return refused
        except (OSError, wire.WireError):
            pass
        return e

    def _take(self, inflight: dict[tuple[int, int], int]) -> tuple[int, int] | None:
        with self._cv:
            if (
                self.error is None
                and self.pending
                and len(inflight) < WINDOW
                and (len(inflight) < 4 or sum(inflight.values()) < WINDOW_BYTES)
            ):
                key = self.pending.popleft()
                inflight[key] = self.length(*key)
                self._sent += 1
                return key
        return None

    def _lost(self, inflight: dict[tuple[int, int], int], why: Exception) -> None:
        """A broken stream: what it had in flight goes to the streams that are left."""
        with self._cv:
            self.counters.faults += 1
            self.counters.retries += len(inflight)
            self.pending.extendleft(inflight)
            inflight.clear()
            if isinstance(why, wire.Refused):
                self.error = TransferError(str(why))
                self.done.set()
            self._cv.notify_all()

    def _send(self, sock: Sock, key: tuple[int, int], n: int, files: _Files) -> None:
        f, c = key
        offset = c * self.manifest.chunk_size
        with self._cv:
            ordinal = self._sent
        tamper = self.faults is not None and self.faults.corrupt_at == ordinal
        if self.compress or n < SMALL or tamper or isinstance(sock, ssl.SSLSocket):
            data = os.pread(files.fd(f), n, offset)
            if len(data) < n:
                raise TransferError(f"{self.name(f)} shrank while it was being sent")
            if tamper and self.faults is not None:
                data = self.faults.tamper(ordinal, data)
            packed = compress.pack(data) if self.compress and n else None
            if packed is not None:
                body = wire.DATAZ.pack(f, c, n)
                self._sent_as(key, len(packed), True)
                sock.sendall(wire.header(wire.Kind.DATAZ, len(body) + len(packed)) + body)
                sock.sendall(packed)
                return
            head = wire.header(wire.Kind.DATA, wire.DATA.size + n) + wire.DATA.pack(f, c)
            self._sent_as(key, n, False)
            if n < SMALL:
                sock.sendall(head + data)
            else:
                sock.sendall(head)
                sock.sendall(data)
            return
        head = wire.header(wire.Kind.DATA, wire.DATA.size + n) + wire.DATA.pack(f, c)
        self._sent_as(key, n, False)
        sock.sendall(head, socket.MSG_MORE)
        fd, sent = files.fd(f), 0
        while sent < n:
            k = os.sendfile(sock.fileno(), fd, offset + sent, n - sent)
            if k == 0:
                raise TransferError(f"{self.name(f)} shrank while it was being sent")
            sent += k

    def _sent_as(self, key: tuple[int, int], nbytes: int, packed: bool) -> None:
        with self._cv:
            self._wire[key] = (nbytes, packed)

    def _acks(
        self, sock: Sock, buf: bytearray, inflight: dict[tuple[int, int], int], wait: float
    ) -> None:
        """Takes every ACK that has arrived (waiting up to ``wait`` seconds for one) with
        one read: with small files there is an ACK per file, and a read each would cost
        more than the file."""
        if not sockets.readable(sock, wait):
            return
        data = sock.recv(ACK_READ)
        if not data:
            raise ConnectionResetError("the receiver closed the stream")
        buf += data
        while len(buf) >= wire.HEADER.size:
            kind, length = wire.parse_header(buf)
            if (kind, length) != (wire.Kind.ACK, wire.ACK.size) and kind is not wire.Kind.ERROR:
                raise wire.WireError(f"expected ACK, got a {kind.name} of {length} bytes")
            end = wire.HEADER.size + length
            if len(buf) < end:
                break
            payload = bytes(buf[wire.HEADER.size : end])
            del buf[:end]
            self._ack(kind, payload, inflight)

    def _ack(self, kind: wire.Kind, payload: bytes, inflight: dict[tuple[int, int], int]) -> None:
        if kind is wire.Kind.ERROR:
            wire.control(kind, payload, ())  # raises Refused, with the receiver's reason
        if kind is not wire.Kind.ACK:
            raise wire.WireError(f"expected ACK, got {kind.name}")
        f, c, status = wire.ACK.unpack(payload)
        verified = 0
        with self._cv:
            n = inflight.pop((f, c), None)
            if n is None:
                return
            if status == wire.Status.OK:
                self.remaining -= 1
                self.counters.chunks += 1
                self.counters.bytes += n
                sent, packed = self._wire.pop((f, c), (n, False))
                self.counters.wire_bytes += sent
                self.counters.compressed_chunks += packed
                verified = n
                if self.remaining == 0:
                    self.done.set()
            else:
                self._attempts[(f, c)] += 1
                self.counters.faults += 1
                self.counters.retries += 1
                if self._attempts[(f, c)] >= MAX_ATTEMPTS:
                    name = self.name(f)
                    self.error = TransferError(
                        f"chunk {c} of {name} failed verification {MAX_ATTEMPTS} times; "
                        "is the file changing while it is copied?"
                    )
                    self.done.set()
                self.pending.appendleft((f, c))
            self._cv.notify_all()
        if verified:
            if self.progress is not None:
                self.progress(verified)
            if self.faults is not None:
                self.faults.verified()


class _Files:
    """One stream's open source files: its own, because ``sendfile`` moves the position."""

    def __init__(self, sources: list[str], name: Callable[[int], str]) -> None:
        self.sources, self.name = sources, name
        self._open: dict[int, int] = {}

    def fd(self, f: int) -> int:
        fd = self._open.get(f)
        if fd is None:
            if len(self._open) >= 8:
                self.close()
            # A file swapped for a FIFO since it was listed would block the open for ever.
            fd = open_read(self.sources[f], nonblock=True)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise TransferError(f"{self.name(f)}: no longer a regular file; run it again")
            self._open[f] = fd
        return fd

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
