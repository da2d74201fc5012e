"""The receiving end, the same on the data server (put) and in the client (get).

Each chunk is checked against the manifest's BLAKE3 hash as it lands in a partial file
next to its destination. A file is renamed into place once every chunk is in and, with
verify on, has hashed as the manifest says. A partial file left by an interrupted
transfer is kept: its chunks that still hash right are not asked for again. At the sync
levels that compare, a file that is there but differs is updated by chunk: the chunks it
shares with its new version are copied from it on this side and only the others move.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from computenet.model.transfer import Manifest, ManifestEntry, SyncLevel, TransferCounters
from computenet.transfer import compress, sockets, wire
from computenet.transfer.faults import Faults
from computenet.transfer.manifest import digest, digest_at, hash_chunks, hash_fd, zeros_digest
from computenet.transfer.pace import Pace
from computenet.transfer.paths import PART, held, open_part, open_read, part_of, reserve
from computenet.transfer.sockets import Sock
from computenet.transfer.wire import TransferError

Progress = Callable[[int], None]
SPLICE_MIN = 1 << 20  # smaller chunks are received into memory and written
BUSY_WAIT = 30.0  # seconds a resent chunk waits for the stream still writing it
MODE_BITS = 0o777  # set-id and sticky bits are never taken from the other end
UPDATED = frozenset({SyncLevel.size, SyncLevel.mtime, SyncLevel.checksum})  # by chunk
SEEDED = 256  # files a copy updates by chunk at most, the largest first: each is held open


@dataclass
class Plan:
    need: list[list[int]]
    skip: list[int]
    present: int = 0
    present_bytes: int = 0
    holes: int = 0  # bytes of all-zero chunks left as holes rather than sent
    replaced: int = 0  # bytes of the files at the destination that the copy replaces
    entries: int = 0  # files and directories the copy makes: each takes an inode

    def wire(self) -> dict[str, object]:
        return {
            "need": self.need,
            "skip": self.skip,
            "present": self.present,
            "present_bytes": self.present_bytes,
            "holes": self.holes,
        }


def unchanged(final: Path, e: ManifestEntry, sync: SyncLevel, chunk: int) -> bool:
    """Whether the file already at the destination may stay, at this sync level."""
    if sync is SyncLevel.none:
        return False
    if sync is SyncLevel.exists:
        return final.exists()  # a link counts by what it leads to
    try:
        st = final.lstat()  # beyond that, a link there is replaced, never read through
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
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
    verify: bool = True
    root: Path | None = None  # where a data server's paths start: named from there in errors
    pace: Pace | None = None  # a cap on the rate chunks are taken in at

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # a chunk's writer let go of it
        self._fds: dict[int, int] = {}
        self._left: dict[int, set[int]] = {}
        self._skip: set[int] = set()
        self._busy: set[tuple[int, int]] = set()
        self._writing: dict[int, threading.Lock] = {}
        self._stamped: set[int] = set()  # files given their mode and times as they finished
        self._resumed: set[int] = set()  # files whose partial file holds chunks already
        self._seeds: set[int] = set()  # files whose replaced file may lend chunks
        self._sparse: set[int] = set()  # files whose all-zero chunks are left as holes
        self._opened: set[int] = set()  # files whose partial file this copy has opened
        self._closed = False
        self._made: set[Path] = set()  # directories this copy made for its partial files
        self._arrived = 0
        # the longest chunk: a stream's buffer, never a whole chunk for a tree of small files
        sizes = (e.size for e in self.manifest.files)
        self._longest = max(1, min(self.manifest.chunk_size, max(sizes, default=0)))

    @property
    def complete(self) -> bool:
        return not any(self._left.values())

    def plan(self) -> Plan:
        """Decides what must move: files the sync level keeps are skipped, chunks that a
        partial file already holds are not asked for. Each destination directory is
        listed once rather than each name looked up twice. Nothing is written yet:
        directories are made as the first chunk of a file in them lands."""
        chunk = self.manifest.chunk_size
        whole = any(e.size >= chunk for e in self.manifest.files)
        zeros = zeros_digest(chunk) if whole else None  # no file has a whole chunk of any
        plan = Plan([], [])
        listings: dict[Path, dict[str, os.DirEntry[str]]] = {}
        for i, (e, final) in enumerate(zip(self.manifest.files, self.finals, strict=True)):
            names = listings.get(final.parent)
            if names is None:
                try:
                    names = listings[final.parent] = _listing(final.parent)
                except NotADirectoryError:
                    raise TransferError(
                        f"{self._shown(final.parent)}: a file stands where a directory must be"
                    ) from None
            there = names.get(final.name)
            if there is not None and there.is_dir():
                into = ": to copy into it, end the path with /" if self.manifest.single else ""
                raise TransferError(
                    f"{self._shown(final)} is a directory; a file cannot replace it{into}"
                )
            if there is not None and unchanged(final, e, self.sync, chunk):
                plan.skip.append(i)
                plan.need.append([])
                self._skip.add(i)
                self.counters.files_skipped += 1
                self.counters.bytes_skipped += e.size
                continue
            replacing = there is not None and there.is_file(follow_symlinks=False)
            if there is not None and replacing:
                plan.replaced += there.stat(follow_symlinks=False).st_size
            part = names.get(f".{final.name}{PART}")
            plan.entries += part is None  # a partial file becomes the file: one inode
            have = set() if part is None else self._resumable(Path(part.path), e, final)
            if part is not None:
                self._resumed.add(i)
                need = [j for j in range(len(e.chunks)) if j not in have]
            else:  # a new file's all-zero chunks read as zeros where nothing is written
                need = [j for j, h in enumerate(e.chunks) if h != zeros]
                if len(need) < len(e.chunks):
                    self._sparse.add(i)
                    plan.holes += (len(e.chunks) - len(need)) * chunk
                if replacing and need and self.sync in UPDATED:
                    self._seeds.add(i)  # its chunks are asked for until seed() finds them
            plan.need.append(need)
            self._left[i] = set(need)
            plan.present += len(have)
            plan.present_bytes += sum(min(chunk, e.size - j * chunk) for j in have)
        plan.entries += sum(not os.path.lexists(d) for d in self.dirs)
        self.counters.chunks_present += plan.present
        self.counters.bytes_skipped += plan.present_bytes
        self.counters.bytes_holes += plan.holes
        return plan

    def seed(self, plan: Plan) -> None:
        """Takes out of ``plan``'s need the chunks that each file being replaced shares
        with its new version, copied into a new partial file. Run once the copy is
        admitted (the disk and the quotas count these chunks as bytes to write) and
        before the other end learns what to send. Each chunk of the old file is read
        once into one buffer, hashed, and written from it where it matches: what lands
        is exactly what matched, even from a file written meanwhile (a copy in the
        kernel, then a second hash of what landed, measured slower). The partial file
        stays open and locked until the copy ends or its last chunk lands: another copy
        that took it meanwhile would find it resumable and write into it, and this one
        would commit that unseen."""
        if not self._seeds:
            return
        chunk = self.manifest.chunk_size
        buf = memoryview(bytearray(chunk))
        seeded = 0
        for i in sorted(self._seeds, key=lambda i: -self.manifest.files[i].size):
            if seeded == SEEDED or self._closed:
                break
            final, e, left = self.finals[i], self.manifest.files[i], self._left[i]
            try:
                src = open_read(final, nonblock=True)  # a FIFO swapped in: never waited on
            except OSError:
                continue  # gone, or not readable: it lends nothing
            fd, same = None, set()
            try:
                if not stat.S_ISREG(os.fstat(src).st_mode):
                    continue
                for j in sorted(left):
                    if self._closed:  # the copy ended (a deadline): nothing more is lent
                        break
                    offset, data = j * chunk, buf[: min(chunk, e.size - j * chunk)]
                    try:
                        if os.preadv(src, [data], offset) < len(data):
                            break  # the old file ends here
                    except OSError:
                        break  # it cannot be read: it lends no more
                    if digest(data) != e.chunks[j]:
                        continue
                    if fd is None:
                        fd = self._hold(_open_part(final), final)
                        _fresh(fd, e.size)
                    reserve(fd, offset, len(data))  # a full disk fails here, not half way
                    if os.pwrite(fd, data, offset) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    same.add(j)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            finally:
                os.close(src)
            if fd is None:
                continue
            with self._lock:
                if self._closed:  # close() ran meanwhile: nobody would release it
                    os.close(fd)
                    break
                self._fds[i] = fd
            seeded += 1
            self._opened.add(i)
            left -= same
            plan.need[i] = sorted(left)
            nbytes = sum(min(chunk, e.size - j * chunk) for j in same)
            plan.present += len(same)
            plan.present_bytes += nbytes
            self.counters.chunks_present += len(same)
            self.counters.bytes_skipped += nbytes
        self._seeds.clear()

    def _shown(self, p: Path) -> str:
        """``p`` as the other end knows it: a pool path on a data server."""
        if self.root is not None and p.is_relative_to(self.root):
            return "/" + p.relative_to(self.root).as_posix()
        return str(p)

    def _resumable(self, part: Path, e: ManifestEntry, final: Path) -> set[int]:
        """The chunks a partial file left by an earlier try already holds. A file with no
        partial gets one when its first chunk lands."""
        try:
            st = part.lstat()
        except FileNotFoundError:
            return set()
        if not stat.S_ISREG(st.st_mode):
            return set()  # opening it (O_NOFOLLOW) refuses it later
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._hold(fd, final)  # refused now, not once bytes flow
        try:
            if st.st_size != e.size:  # what lies past its end reads as zeros, as it will
                os.fchmod(fd, 0o600)  # a commit cut short may have left it read-only
                rw = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    if not os.path.sameopenfile(rw, fd):
                        raise TransferError(
                            f"{self._shown(final)}: its partial file was replaced while it "
                            "was read: run the copy again"
                        )
                    os.ftruncate(rw, e.size)
                finally:
                    os.close(rw)
            got = hash_fd(fd, e.size, self.manifest.chunk_size)
        finally:
            os.close(fd)
        return {j for j, h in enumerate(got) if h == e.chunks[j]}

    def accept(
        self, f: int, c: int, data: bytes | memoryview, packed: int | None = None
    ) -> wire.Status:
        """A chunk received into memory: checked, then written. ``packed`` is its size
        on the wire when it came compressed."""
        fd = self._claim(f, c)
        if isinstance(fd, wire.Status):
            return fd
        ok = False
        try:
            data = self._tamper(data)
            if self.verify and digest(data) != self.manifest.files[f].chunks[c]:
                return self._bad()
            if len(data) >= SPLICE_MIN:
                reserve(fd, c * self.manifest.chunk_size, len(data))
                with self._writer(f):  # see sockets.Pipe.splice
                    os.pwrite(fd, data, c * self.manifest.chunk_size)
            else:
                os.pwrite(fd, data, c * self.manifest.chunk_size)
            ok = True
        finally:
            self._settle(f, c, len(data), ok, packed)
        return wire.Status.OK

    def check(self, f: int, c: int, n: int) -> wire.Status:
        """A chunk already spliced into the partial file: checked from the file's own
        pages, so what is verified is what a reader will get."""
        ok = False
        try:
            offset = c * self.manifest.chunk_size
            if self.faults is not None and self._tamper(b"\0") != b"\0":
                first = os.pread(self._fds[f], 1, offset)  # flipped, as a bad wire would
                os.pwrite(self._fds[f], bytes([first[0] ^ 0xFF]), offset)
            if (  # what was just written is read back, never taken for a hole
                self.verify
                and digest_at(self._fds[f], offset, n, holes=False)
                != self.manifest.files[f].chunks[c]
            ):
                return self._bad()
            ok = True
        finally:
            self._settle(f, c, n, ok)
        return wire.Status.OK

    def _claim(self, f: int, c: int) -> int | wire.Status:
        """The partial file's descriptor, once this stream holds chunk ``c``; else the
        answer for the sender. A chunk that landed already is OK: its ACK went down
        with a stream that broke before reading it, and the copy must not fail for that.
        One that another stream is still writing (the broken one, still draining) is
        waited for, then taken or acknowledged."""
        left = self._left.get(f)
        if left is None or c >= len(self.manifest.files[f].chunks):
            return wire.Status.UNKNOWN
        with self._free:
            if self._closed:  # the copy is over: a stream still draining writes nothing
                return wire.Status.UNKNOWN
            busy = (f, c) in self._busy
            if busy and not self._free.wait_for(lambda: (f, c) not in self._busy, BUSY_WAIT):
                return wire.Status.UNKNOWN
            if self._closed:  # ended while this stream waited
                return wire.Status.UNKNOWN
            if c not in left:
                return wire.Status.OK
            fd = self._fds.get(f)
            if fd is None:
                final = self.finals[f]
                fd = self._fds[f] = self._hold(_open_part(final, self._made), final)
                if f in self._resumed:  # it may hold an earlier run's mode: private again
                    os.fchmod(fd, 0o600)
                elif f not in self._opened:  # made since the plan by a copy gone now
                    _fresh(fd, self.manifest.files[f].size if f in self._sparse else 0)
                self._opened.add(f)
            self._busy.add((f, c))
            return fd

    def _hold(self, fd: int, final: Path) -> int:
        """``fd`` (a partial file of ``final``), held by this copy alone: two copies to one
        path at once would write into one partial file, and the one that commits last
        would leave the other's chunks in it. A copy whose partial file another copy
        holds is refused."""
        return held(fd, lambda: f"another copy is writing {self._shown(final)} now")

    def _writer(self, f: int) -> threading.Lock:
        with self._lock:
            return self._writing.setdefault(f, threading.Lock())

    def _settle(self, f: int, c: int, n: int, ok: bool, packed: int | None = None) -> None:
        fd = None
        with self._free:
            self._busy.discard((f, c))
            self._free.notify_all()
            left = self._left[f]
            if ok and c in left:
                left.discard(c)
                self.counters.chunks += 1
                self.counters.bytes += n
                self.counters.wire_bytes += n if packed is None else packed
                self.counters.compressed_chunks += packed is not None
                if not left:
                    fd = self._fds.pop(f, None)  # None: closed already, the copy is over
                    self._writing.pop(f, None)
        if fd is not None:
            try:
                if _stamp(fd, self.manifest.files[f]):
                    with self._lock:
                        self._stamped.add(f)
            finally:
                os.close(fd)
        if ok:
            if self.progress is not None:
                self.progress(n)
            if self.faults is not None:
                self.faults.verified()

    def _bad(self) -> wire.Status:
        with self._lock:
            self.counters.faults += 1
            self.counters.retries += 1  # the sender puts it back in its queue
        return wire.Status.BAD_HASH

    def _tamper(self, data: bytes | memoryview) -> bytes | memoryview:
        if self.faults is None or self.faults.corrupt_at is None:
            return data
        with self._lock:
            self._arrived += 1
            ordinal = self._arrived
        return self.faults.tamper(ordinal, bytes(data))

    def stream(self, sock: Sock) -> None:
        """One data stream, on a thread of its own: chunks in, an ACK for each, until the
        sender closes it. On a plain socket each chunk is spliced from the socket into
        the partial file without passing through this process, and another thread hashes
        it from the page cache while the next one arrives. Over TLS the bytes must be
        decrypted here: received into a buffer, checked, written, on one thread, since
        an SSL connection must not be used from two at once."""
        if isinstance(sock, ssl.SSLSocket) or not sockets.SPLICE:
            buf = memoryview(b"")  # made when the first chunk comes: not for idle streams
            while (head := self._head(sock)) is not None:
                f, c, n, size = head
                if len(buf) < self._longest:
                    buf = memoryview(bytearray(self._longest))
                if size is not None:
                    self._ack(sock, f, c, self._packed(sock, buf, f, c, n, size))
                    continue
                if n and not sockets.recv_exact(sock, buf[:n]):
                    raise ConnectionResetError("the sender closed the stream inside a chunk")
                self._ack(sock, f, c, self.accept(f, c, buf[:n]))
                if self.pace is not None:
                    self.pace.take(n)
            return
        work: queue.SimpleQueue[tuple[int, int, int, wire.Status | None] | None]
        work = queue.SimpleQueue()
        failed: list[BaseException] = []
        small = memoryview(bytearray(min(SPLICE_MIN, self._longest)))
        packed = memoryview(b"")  # a chunk-sized buffer, made when the first DATAZ comes
        sending = threading.Lock()
        ready = bytearray()  # ACKs of small chunks, written when the socket runs dry

        def flush(acks: bytearray) -> None:
            if acks:
                with sending:
                    sock.sendall(acks)
                acks.clear()

        def idle() -> None:
            flush(ready)

        def worker() -> None:
            acks = bytearray()
            try:
                while (item := work.get()) is not None:
                    f, c, n, status = item
                    status = self.check(f, c, n) if status is None else status
                    acks += _ack_frame(f, c, status)
                    if work.empty():  # one write for every ACK that is ready
                        flush(acks)
                flush(acks)
            except BaseException as e:
                failed.append(e)
                sockets.shut(sock)

        # Small chunks are taken on this thread and the verifier starts with the first
        # large one: a thread hand-off per 100 KiB file would cost more than the file.
        t: threading.Thread | None = None
        pipe = sockets.Pipe()
        try:
            while not failed and (head := self._head(sock, idle)) is not None:
                if self.pace is not None:  # after the chunk before; held ACKs go first
                    flush(ready)
                    self.pace.take(head[2])
                f, c, n, size = head
                if size is not None:
                    if len(packed) < self._longest:
                        packed = memoryview(bytearray(self._longest))
                    ready += _ack_frame(f, c, self._packed(sock, packed, f, c, n, size))
                    continue
                if n < SPLICE_MIN:  # a syscall or two: cheaper than splicing
                    if n and not sockets.recv_exact(sock, small[:n]):
                        raise ConnectionResetError("the sender closed the stream inside a chunk")
                    ready += _ack_frame(f, c, self.accept(f, c, small[:n]))
                    continue
                flush(ready)
                if t is None:
                    t = threading.Thread(target=worker, name="cnet-verify", daemon=True)
                    t.start()
                fd = self._claim(f, c)
                if isinstance(fd, wire.Status):
                    pipe.discard(sock, n)
                    work.put((f, c, n, fd))
                    continue
                try:
                    reserve(fd, c * self.manifest.chunk_size, n)
                    pipe.splice(sock, fd, c * self.manifest.chunk_size, n, self._writer(f))
                except BaseException:
                    self._settle(f, c, n, False)
                    raise
                work.put((f, c, n, None))
            flush(ready)
        except OSError:
            if not failed:
                raise
        finally:
            pipe.close()
            if t is not None:
                work.put(None)
                t.join()
        if failed:
            raise failed[0]

    def _head(
        self, sock: Sock, idle: Callable[[], None] | None = None
    ) -> tuple[int, int, int, int | None] | None:
        """The next chunk's header: (file, chunk, bytes on the wire, size once unpacked or
        None when it came as it is), or None at the end. ``idle`` runs first where none
        has arrived yet (ACKs held back are sent then): trying the read costs no more
        than asking whether one would block."""
        head = bytearray(wire.HEADER.size + wire.DATA.size)
        view, got = memoryview(head), 0
        if idle is not None:
            try:
                got = sock.recv_into(view, len(view), socket.MSG_DONTWAIT)
                if not got:
                    return None
            except BlockingIOError:
                idle()
        if got < len(view) and not sockets.recv_exact(sock, view[got:]):
            if got:
                raise ConnectionResetError("the sender closed the stream inside a frame")
            return None
        view.release()  # ``head`` grows for DATAZ
        kind, length = wire.parse_header(head)
        f, c = wire.DATA.unpack_from(head, wire.HEADER.size)
        size: int | None = None
        if kind is wire.Kind.DATAZ:
            head += bytes(wire.DATAZ.size - wire.DATA.size)
            if not sockets.recv_exact(sock, memoryview(head)[wire.HEADER.size + wire.DATA.size :]):
                raise ConnectionResetError("the sender closed the stream inside a chunk")
            _, _, size = wire.DATAZ.unpack_from(head, wire.HEADER.size)
            n = length - wire.DATAZ.size
            if n >= size:  # a sender packs only what shrinks
                raise wire.WireError(f"a packed chunk of {n} bytes unpacks to only {size}")
        elif kind is wire.Kind.DATA:
            n = length - wire.DATA.size
        else:
            raise wire.WireError(f"expected DATA on a data stream, got {kind.name}")
        want = self._length(f, c)
        if want is not None and n >= 0 and (n if size is None else size) != want:
            raise wire.WireError(
                f"chunk {c} of file {f} is {n if size is None else size} bytes; "
                f"its manifest makes it {want}"
            )
        if n < 0 or max(n, size or 0) > self._longest:  # the buffers' length
            raise wire.WireError(f"a chunk of {n} bytes is larger than the manifest's chunks")
        return f, c, n, size

    def _length(self, f: int, c: int) -> int | None:
        """How long chunk ``c`` of file ``f`` is, by the manifest; None where it has no
        such chunk (answered UNKNOWN)."""
        files = self.manifest.files
        if f >= len(files) or c >= len(files[f].chunks):
            return None
        return min(self.manifest.chunk_size, files[f].size - c * self.manifest.chunk_size)

    def _packed(
        self, sock: Sock, buf: memoryview, f: int, c: int, n: int, size: int
    ) -> wire.Status:
        """A compressed chunk: received whole, unpacked, then checked and written."""
        if not sockets.recv_exact(sock, buf[:n]):
            raise ConnectionResetError("the sender closed the stream inside a chunk")
        return self.accept(f, c, compress.unpack(buf[:n], size), packed=n)

    @staticmethod
    def _ack(sock: Sock, f: int, c: int, status: wire.Status) -> None:
        sock.sendall(_ack_frame(f, c, status))

    def commit(self) -> None:
        """Renames each finished file into place (atomically, one by one), once every
        file is in: an interrupted copy leaves only partial files, which the next run
        resumes. With verify on, each chunk was checked against the sender's hash as it
        landed, so nothing is read back here."""
        if not self.complete:
            missing = sum(len(x) for x in self.files_left().values())
            raise TransferError(f"{missing} chunks are still missing; run the copy again")
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        for i, (e, final) in enumerate(zip(self.manifest.files, self.finals, strict=True)):
            if i in self._skip:
                continue
            part = part_of(final)
            held = None
            try:
                if i not in self._opened and i not in self._resumed:  # empty, or all hole
                    held = self._hold(_open_part(final), final)  # held until it is in place
                    _fresh(held, e.size)
                if i not in self._stamped:  # one of those, resumed whole, or not writable
                    os.chmod(part, e.mode & MODE_BITS)
                    os.utime(part, ns=(e.mtime_ns, e.mtime_ns))
                os.replace(part, final)
            except FileNotFoundError:
                raise TransferError(
                    f"{self._shown(final)} was put in place by another copy meanwhile: "
                    "run this one again"
                ) from None
            finally:
                if held is not None:
                    os.close(held)
            self.counters.files += 1

    def discard(self) -> None:
        """Takes back what a refused copy left: its partial files, and the directories it
        made for them. Nothing was renamed into place yet, and a directory that was there
        before stays."""
        self.close()
        for i, final in enumerate(self.finals):
            if i not in self._skip:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part_of(final))
        for d in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty: something else is in it now
                d.rmdir()

    def files_left(self) -> dict[int, set[int]]:
        return {f: left for f, left in self._left.items() if left}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()


def _listing(d: Path) -> dict[str, os.DirEntry[str]]:
    """What a destination directory holds, by name; nothing where it is missing."""
    try:
        with os.scandir(d) as entries:
            return {x.name: x for x in entries}
    except FileNotFoundError:
        return {}


def _open_part(final: Path, made: set[Path] | None = None) -> int:
    """The partial file of ``final``, made with its directory where there is none yet;
    the directories made go into ``made``."""
    try:
        return open_part(part_of(final))
    except FileNotFoundError:
        missing, d = [], final.parent
        while not d.exists():
            missing.append(d)
            d = d.parent
        final.parent.mkdir(parents=True, exist_ok=True)
        if made is not None:
            made.update(missing)
        return open_part(part_of(final))


def _fresh(fd: int, size: int) -> None:
    """Empties a partial file this copy made, then gives it ``size`` bytes of hole."""
    os.ftruncate(fd, 0)
    if size:
        os.ftruncate(fd, size)


def _stamp(fd: int, e: ManifestEntry) -> bool:
    """Gives a finished partial file its times and, where that leaves its owner able to
    read and write it (a later run may resume it), its mode, through the descriptor that
    wrote it: at commit, each would be a lookup by path. True when both are set."""
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    if e.mode & 0o600 == 0o600:
        os.fchmod(fd, e.mode & MODE_BITS)
        return True
    return False


def _ack_frame(f: int, c: int, status: wire.Status) -> bytes:
    return wire.header(wire.Kind.ACK, wire.ACK.size) + wire.ACK.pack(f, c, status)
