"""The client side of a transfer: ``put`` a local file or tree into a pool, ``get`` one out.

The node has already granted a ticket (``POST /v1/transfers``); from here on the client
talks to the pool's data server only. Stream count follows the bytes still to move.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from computenet.model.transfer import (
    MAX_STREAMS,
    DataEndpoint,
    Direction,
    Manifest,
    ManifestFrame,
    RelayFrame,
    SyncLevel,
    TransferCounters,
    TransferGrant,
    TransferResult,
)
from computenet.transfer import compress, sockets, tls, wire
from computenet.transfer.faults import Faults
from computenet.transfer.hashes import HashCache
from computenet.transfer.manifest import CHUNK, Source, build, sizes, tree_hash
from computenet.transfer.pace import Pace
from computenet.transfer.paths import PART, PathError, confine, exclusive, normalise
from computenet.transfer.quota import fits
from computenet.transfer.receiver import SPLICE_MIN, Receiver
from computenet.transfer.sender import Sender, checked_need, need_limit
from computenet.transfer.sockets import Sock
from computenet.transfer.wire import Kind, TransferError

CONNECT_TIMEOUT = 30.0
ASK_ROOM = 256 << 20  # a put this large asks whether it fits before hashing its source
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Destination = Callable[[int, bool], Awaitable[TransferGrant]]  # (bytes, a single file?)


class Watcher(Protocol):
    """Told the bytes to move once, then each verified chunk: what a progress bar needs."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass
class Options:
    streams: int | None = None  # None: chosen by size
    sync: SyncLevel = SyncLevel.none
    verify: bool = True
    deadline: float | None = None  # seconds for the whole copy
    tls: bool | None = None  # None: as the pool's endpoint advises
    compress: bool | None = None  # None: when a sample of the files shrinks (zstd)
    chunk_size: int = CHUNK
    watcher: Watcher | None = None
    faults: Faults = field(default_factory=Faults.from_env)
    hashes: HashCache | None = None  # a data server's hashes of its own files
    tree_hash: str | None = None  # the tree the source must be: checked before bytes move
    exact: bool = False  # a put whose destination must hold nothing else
    name: str | None = None  # a single file's name in a destination directory (default: its own)
    into: bool = False  # a get's local destination is a directory, made if need be
    pace: Pace | None = None  # a get takes data in no faster than this; None: as fast as it can


async def _honest(m: Manifest, where: str) -> None:
    """A manifest from a data server is checked against its own tree hash, hashed here:
    every chunk is then verified against it, so a server that claimed a version's hash
    over other files would otherwise have them landed, and recorded, as that version."""
    if await asyncio.to_thread(tree_hash, m.files, m.dirs) != m.tree_hash:
        raise TransferError(
            f"{where}: the data server's manifest does not hash to the tree hash it gives; "
            "nothing was copied"
        )


def _expected(options: Options, m: Manifest, where: str) -> None:
    """A source that is not the tree asked for (a dataset's copy changed where it lies)
    is refused before anything lands: every chunk is then checked against this manifest,
    so a copy that starts is a copy of that tree."""
    if options.tree_hash is not None and m.tree_hash != options.tree_hash:
        raise TransferError(
            f"{where} has changed since it was recorded: its tree hash is "
            f"{m.tree_hash[:16]}…, not {options.tree_hash[:16]}…; nothing was copied"
        )


def streams_for(lengths: Iterable[int]) -> int:
    """One stream per 128 MiB of large chunks still to move, and for small files (chunks
    under 1 MiB) one per 256 MiB up to a stream a core; in all, up to 8 and to twice the
    cores. A small file costs its stream a few system calls and a new file's pages, which
    a second core halves; past a stream a core, threads only fight for the interpreter."""
    large = small = 0
    for n in lengths:
        if n >= SPLICE_MIN:
            large += n
        else:
            small += n
    cores = os.cpu_count() or 1
    want = (1 + large // (128 << 20) if large else 0) + (
        min(cores, 1 + small // (256 << 20)) if small else 0
    )
    return max(1, min(8, 2 * cores, want))


def wants_tls(ep: DataEndpoint) -> bool:
    """TLS unless asked otherwise: on where the pool advises it and on every link that
    leaves this machine; off on loopback, where it would only cost CPU."""
    if ep.tls:
        return True
    if ep.host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(ep.host).is_loopback
    except ValueError:
        return True  # a name: another machine, as far as this end can tell


class _Link:
    """The connections of one transfer to one data server."""

    def __init__(self, grant: TransferGrant, direction: Direction, options: Options) -> None:
        self.grant, self.direction = grant, direction
        self.id = secrets.token_hex(8)
        self.tls = wants_tls(grant.endpoint) if options.tls is None else options.tls
        self.conns: list[Conn] = []
        self.socks: list[Sock] = []
        self.welcome: dict[str, Any] = {}  # what the server said on accepting the control

    async def open(self, role: str, extra: dict[str, Any] | None = None) -> Conn:
        """The control (or relay, or list) connection, on the event loop."""
        ep = self.grant.endpoint
        try:
            reader, writer = await asyncio.open_connection(
                ep.host, ep.port, limit=wire.STREAM_LIMIT
            )
        except OSError as e:
            raise self._unreachable(e) from e
        sockets.tune(writer.get_extra_info("socket"))
        self.conns.append((reader, writer))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):  # a server that never answers
                if self.tls:
                    wire.send_json(writer, Kind.HELLO, {"starttls": True})
                    await writer.drain()
                    await wire.expect(reader, Kind.OK)
                    await writer.start_tls(tls.client_context())
                    tls.pinned(writer.get_extra_info("ssl_object"), ep.fingerprint)
                wire.send_json(writer, Kind.HELLO, self.hello(role) | (extra or {}))
                await writer.drain()
                if role == "control":  # a listing, a removal or a relay answers once done
                    _, self.welcome = await wire.expect(reader, Kind.OK)
            if role != "control":
                _, self.welcome = await wire.expect(reader, Kind.OK)
        except TimeoutError:
            raise self._unreachable() from None
        return reader, writer

    def connect(self) -> Sock:
        """A data connection, admitted and ready: blocking, for a thread of its own."""
        ep = self.grant.endpoint
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise self._unreachable(e) from e
        sockets.tune(sock)
        self.socks.append(sock)
        try:  # the handshake under the connect timeout too: a server may never answer
            if self.tls:
                sockets.send_json(sock, Kind.HELLO, {"starttls": True, "role": "data"})
                sockets.expect(sock, Kind.OK)
                sock = tls.client_context().wrap_socket(sock)
                self.socks.append(sock)
                tls.pinned(sock, ep.fingerprint)
            sockets.send_json(sock, Kind.HELLO, self.hello("data"))
            sockets.expect(sock, Kind.OK)
        except TimeoutError:
            raise self._unreachable() from None
        sock.settimeout(None)
        return sock

    def _unreachable(self, e: OSError | None = None) -> TransferError:
        ep = self.grant.endpoint
        pool = self.grant.ticket.claims.pool
        where = f"the data server of {pool} at {ep.host}:{ep.port}"
        hint = "; is its agent running? (`cnet resources` shows the pool's status)"
        if e is None:
            return TransferError(f"{where} did not answer within {CONNECT_TIMEOUT:g} s{hint}")
        return TransferError(f"cannot reach {where}: {e.strerror or e}{hint}")

    async def open_many(self, n: int) -> list[Sock]:
        return list(await asyncio.gather(*(sockets.in_thread(self.connect) for _ in range(n))))

    def hello(self, role: str) -> dict[str, Any]:
        return {
            "ticket": self.grant.ticket.model_dump(mode="json"),
            "direction": self.direction.value,
            "path": self.grant.path,
            "transfer": self.id,
            "role": role,
        }

    def close(self) -> None:
        for _, w in self.conns:
            with contextlib.suppress(Exception):
                w.close()
        for sock in self.socks:
            sockets.shut(sock)


def _advance(w: Watcher | None) -> Callable[[int], None] | None:
    """The watcher's ``advance``, called on the event loop's thread: streams run on threads
    of their own, and a progress bar or a relay's teller is not thread-safe. Chunks that
    land while a call is pending join it: a wake-up of the loop per 100 KiB file would
    cost the streams more than the file."""
    if w is None:
        return None
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    pending = [0]

    def flush() -> None:
        with lock:
            n, pending[0] = pending[0], 0
        w.advance(n)

    def advance(n: int) -> None:
        with lock:
            first = not pending[0]
            pending[0] += n
        if first:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(flush)

    return advance


async def _bounded(options: Options, what: Any) -> TransferResult:
    try:
        async with asyncio.timeout(options.deadline):
            result: TransferResult = await what
            return result
    except TimeoutError:
        raise TransferError(
            f"the copy passed its deadline of {options.deadline:g}s; "
            "run it again to resume from where it stopped"
        ) from None


def _result(
    grant: TransferGrant,
    direction: Direction,
    local: Path,
    m: Manifest,
    counters: TransferCounters,
    streams: int,
    started: float,
) -> TransferResult:
    remote = f"{grant.ticket.claims.pool}:{grant.path}"
    here = str(local)
    return TransferResult(
        source=here if direction is Direction.put else remote,
        destination=remote if direction is Direction.put else here,
        direction=direction.value,
        streams=streams,
        seconds=round(time.monotonic() - started, 6),
        tree_hash=m.tree_hash,
        total_bytes=m.total_bytes,
        counters=counters,
    )


async def put(
    grant: TransferGrant, source: Path, options: Options | None = None, where: str | None = None
) -> TransferResult:
    """Copies ``source`` (a file, or a directory's contents) to the ticket's path.
    ``where`` names the source in errors (a data server's own paths stay its own)."""
    options = options or Options()
    return await _bounded(options, _put(grant, source, options, where or str(source)))


async def _put(grant: TransferGrant, source: Path, options: Options, where: str) -> TransferResult:
    started = time.monotonic()
    if source.is_symlink():  # named itself, a link is followed, as cp follows one
        source = source.resolve()
    if grant.ticket.claims.max_bytes >= ASK_ROOM:  # refused now, not after minutes of hashing
        size, disk = await asyncio.to_thread(sizes, source)
        if size >= ASK_ROOM:  # the disk it needs leaves out holes, which the copy keeps
            await ask(grant, "room", {"size": size, "disk": disk}, options.tls)
    # On a thread of its own: Ctrl-C does not wait for a large source to be hashed.
    src = await sockets.in_thread(build, source, options.chunk_size, options.hashes)
    try:
        _expected(options, src.manifest, where)
        return await _send(grant, src, source, options, started)
    except BaseException:
        if options.hashes is not None:
            options.hashes.forget(src.paths)
        raise


async def ask(
    grant: TransferGrant, role: str, body: dict[str, Any], tls: bool | None = None
) -> dict[str, Any]:
    """A question for the granted path's data server that one frame answers (a listing,
    a removal): the answer comes with its OK."""
    link = _Link(grant, grant.ticket.claims.direction, Options(tls=tls))
    try:
        await link.open(role, body)
        return link.welcome
    finally:
        link.close()


def _moving(m: Manifest, c: TransferCounters) -> int:
    """The bytes still to cross the wire, as counted so far."""
    return m.total_bytes - c.bytes_skipped - c.bytes_holes


async def _send(
    grant: TransferGrant, src: Source, source: Path, options: Options, started: float
) -> TransferResult:
    m = src.manifest
    link = _Link(grant, Direction.put, options)
    counters = TransferCounters(left_out=src.left_out)
    try:
        reader, writer = await link.open("control")
        frame = ManifestFrame(
            manifest=m,
            sync=options.sync,
            verify=options.verify,
            exact=options.exact,
            sole=options.tree_hash is not None,  # a dataset's copy: recorded only alone
        )
        wire.send_model(writer, Kind.MANIFEST, frame, None if frame.sole else {"sole"})
        await writer.drain()
        _, plan = await wire.expect(reader, Kind.NEED, limit=need_limit(m))
        need = await asyncio.to_thread(checked_need, plan, m)
        counters.chunks_present = need.present
        counters.files_skipped = len(need.skip)
        counters.bytes_skipped = need.present_bytes + sum(m.files[i].size for i in need.skip)
        counters.bytes_holes = need.holes
        w = options.watcher
        packed = options.compress
        if packed is None:
            packed = await asyncio.to_thread(compress.worth_it, src.paths)
        sender = Sender(m, src.paths, need.chunks, counters, _advance(w), options.faults, packed)
        if w is not None:
            w.start(_moving(m, counters))
        streams = 0
        if sender.remaining:
            todo = [sender.length(f, c) for f, c in sender.pending]
            streams = min(MAX_STREAMS, options.streams or streams_for(todo))
            socks = await link.open_many(streams)
            await asyncio.gather(*(sockets.in_thread(sender.stream, s_) for s_ in socks))
            if sender.error is not None:
                raise sender.error
        wire.send(writer, Kind.COMMIT)
        await writer.drain()
        _, done = await wire.expect(reader, Kind.DONE)
        counters.files = int(done.get("files", 0))
        counters.faults = max(counters.faults, int(done.get("faults", 0)))
        result = _result(grant, Direction.put, source, m, counters, streams, started)
        merged = done.get("merged")
        result.merged = merged if isinstance(merged, bool) else None
        return result
    finally:
        link.close()


async def manifest(grant: TransferGrant, options: Options | None = None) -> Manifest:
    """What a get of the ticket's path would move, and nothing moved."""
    options = options or Options()
    link = _Link(grant, Direction.get, options)

    async def ask() -> Manifest:
        reader, writer = await link.open("control")
        m = (await wire.expect_model(reader, Kind.MANIFEST, ManifestFrame)).manifest
        wire.send_json(writer, Kind.NEED, {"need": [[] for _ in m.files], "compress": False})
        await writer.drain()
        await wire.expect(reader, Kind.OK)
        wire.send(writer, Kind.DONE)
        with contextlib.suppress(Exception):
            await writer.drain()
        await _honest(m, f"{grant.ticket.claims.pool}:{grant.path}")
        return m

    try:
        async with asyncio.timeout(options.deadline):
            return await ask()
    except TimeoutError:
        raise TransferError(
            f"the copy passed its deadline of {options.deadline:g}s before any byte moved"
        ) from None
    finally:
        link.close()


async def get(grant: TransferGrant, dest: Path, options: Options | None = None) -> TransferResult:
    """Copies the ticket's path (a file, or a directory's contents) to ``dest``."""
    options = options or Options()
    return await _bounded(options, _get(grant, dest, options))


async def _get(grant: TransferGrant, dest: Path, options: Options) -> TransferResult:
    started = time.monotonic()
    link = _Link(grant, Direction.get, options)
    counters = TransferCounters()
    try:
        reader, writer = await link.open("control")
        offer = await wire.expect_model(reader, Kind.MANIFEST, ManifestFrame)
        m, counters.left_out = offer.manifest, offer.left_out
        where = f"{grant.ticket.claims.pool}:{grant.path}"
        await _honest(m, where)
        _expected(options, m, where)
        if m.single:
            name = options.name or grant.path.rstrip("/").rsplit("/", 1)[-1]
            target = dest / name if options.into or dest.is_dir() else dest
            _replaceable(target)
            finals, dirs = [target], []
            lock = target.with_name(f".{target.name}.lock{PART}")
        else:
            # Names from the server are confined too: a server cannot write outside dest,
            # and a link in dest is not written through, as onto a single file.
            finals = [_into(dest, e.path) for e in m.files]
            dirs = [dest, *(_into(dest, d) for d in m.dirs)]  # an empty tree makes dest
            target, lock = dest, dest / f".cnet.lock{PART}"
            if dest.exists() and not dest.is_dir():
                raise TransferError(f"{dest} is a file: a directory cannot land there")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TransferError(f"{lock.parent}: cannot make it: {e.strerror or e}") from None
        w = options.watcher
        receiver = Receiver(
            m,
            finals,
            dirs,
            options.sync,
            counters,
            _advance(w),
            options.faults,
            options.verify,
            pace=options.pace,
        )
        with exclusive(lock, str(target)):
            try:
                plan = await sockets.in_thread(receiver.plan)
                # before any byte moves, as a data server checks a put; seeding counts
                # against it, and leaves fewer bytes for the progress bar
                fits(lock.parent, _moving(m, counters), plan.entries, str(dest))
                await sockets.in_thread(receiver.seed, plan)
                if w is not None:
                    w.start(_moving(m, counters))
                wire.send_json(writer, Kind.NEED, {**plan.wire(), "compress": options.compress})
                await writer.drain()
                await wire.expect(reader, Kind.OK)
                todo = [
                    min(m.chunk_size, m.files[f].size - c * m.chunk_size)
                    for f, chunks in enumerate(plan.need)
                    for c in chunks
                ]
                streams = 0
                if todo or any(plan.need):
                    streams = min(MAX_STREAMS, options.streams or streams_for(todo))
                    socks = await link.open_many(streams)
                    await asyncio.gather(*(sockets.in_thread(receiver.stream, s) for s in socks))
                await asyncio.to_thread(receiver.commit)
            finally:
                receiver.close()
        wire.send(writer, Kind.DONE)
        with contextlib.suppress(Exception):
            await writer.drain()
        return _result(grant, Direction.get, target, m, counters, streams, started)
    finally:
        link.close()


def _into(dest: Path, rel: str) -> Path:
    """Where ``rel`` of a tree lands in a local destination: never through a link, where
    it leads out of ``dest`` or not."""
    try:
        return confine(dest, rel, links=False, what=str(dest))
    except PathError as e:
        at = dest
        for name in normalise(rel).split("/"):
            at = at / name
            if at.is_symlink():
                raise TransferError(f"{at} is a link: name the path it leads to") from None
        raise TransferError(f"into {dest}: {e}") from None


def _replaceable(target: Path) -> None:
    """A copy renames its file into place: onto a link it would replace the link (and
    onto ``/dev/stdout`` or a device, the device file), not write where it leads."""
    if target.is_symlink():
        raise TransferError(f"{target} is a link: name the path it leads to")
    if target.exists() and not target.is_file():
        raise TransferError(f"{target} is not a regular file: a copy cannot replace it")


async def relay(
    source: TransferGrant, destination: Destination, options: Options | None = None
) -> TransferResult:
    """Pool to pool: the source pool's data server puts straight into the destination
    pool; this client only asks for the tickets and watches."""
    options = options or Options()
    return await _bounded(options, _relay(source, destination, options))


async def _relay(
    source: TransferGrant, destination: Destination, options: Options
) -> TransferResult:
    link = _Link(source, Direction.get, options)
    try:
        reader, writer = await link.open("relay")
        grant = await destination(
            int(link.welcome.get("total_bytes", 0)), bool(link.welcome.get("file"))
        )
        frame = RelayFrame(
            grant=grant,
            streams=options.streams,
            sync=options.sync,
            verify=options.verify,
            tls=options.tls,
            compress=options.compress,
            tree_hash=options.tree_hash,
            exact=options.exact,
        )
        wire.send_model(writer, Kind.RELAY, frame)
        await writer.drain()
        seen, w = 0, options.watcher
        while True:
            kind, msg = await wire.expect(reader, Kind.PROGRESS, Kind.DONE)
            if kind is Kind.DONE:
                return TransferResult.model_validate(msg.get("result"))
            if w is not None and "total" in msg:
                w.start(int(msg["total"]))
            elif w is not None:
                w.advance(int(msg.get("done", seen)) - seen)
            seen = int(msg.get("done", seen))
    finally:
        link.close()
