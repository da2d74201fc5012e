"""The agent's data server: serves the pool's data root to holders of a node's ticket.

Each transfer has one control connection (HELLO, MANIFEST, NEED, COMMIT, DONE) and one or
more data connections that join it by its id; every connection shows the ticket again.
Control connections stay on the event loop; an admitted data connection leaves it for a
thread of its own (``sockets``).
The node's public key is fetched from the node and refreshed when a ticket does not
verify, so a node that changed its key is followed without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import ssl
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import ValidationError

from computenet.model.transfer import (
    MAX_STREAMS,
    DataEndpoint,
    Direction,
    ListQuery,
    Manifest,
    ManifestFrame,
    RelayFrame,
    SyncLevel,
    Ticket,
    TransferGrant,
)
from computenet.transfer import client, compress, listing, records, removal, sockets, wire
from computenet.transfer import ticket as tickets
from computenet.transfer.faults import Faults
from computenet.transfer.hashes import HashCache
from computenet.transfer.manifest import CHUNK, build, total_size, tree_hash
from computenet.transfer.paths import (
    PART,
    RESERVED,
    PathError,
    confine,
    drop_parts,
    files_under,
    normalise,
    part_of,
    sweep_fetches,
    sweep_parts,
    within,
    writable_name,
)
from computenet.transfer.quota import Quota, fits
from computenet.transfer.receiver import Receiver
from computenet.transfer.sender import Sender, checked_need, need_limit
from computenet.transfer.sockets import Sock
from computenet.transfer.ticket import BadSignature, TicketError
from computenet.transfer.tls import server_context
from computenet.transfer.wire import Code, Kind, Refused, TransferError

log = logging.getLogger("computenet.transfer")
KEY_REFRESH = 10.0
ROOT = "the pool's data root"  # as errors name it
ADMIT_TIMEOUT = 60.0
# A transfer in which no chunk moves for this long is stopped (``CNET_TRANSFER_IDLE``).
IDLE_TIMEOUT = float(os.environ.get("CNET_TRANSFER_IDLE", "300"))
HANDSHAKE_TIMEOUT = min(30.0, IDLE_TIMEOUT)  # from connecting to a HELLO that checks out
NEED_TIMEOUT = 3600.0  # the longest a get's client may take to say what it needs
HASH_FLOOR = 50e6  # bytes a second a client hashes its partial files at, on a slow disk
MAX_REASON = 4096  # characters of an ERROR's reason
KEPT = "it is left in place"  # a copy removal refuses: another tree, or more than the version
ERROR_WAIT = 5.0  # seconds an ERROR waits to be taken before its connection closes
MAX_SESSIONS = 256  # copies a data server moves at once
PER_TICKET = 4  # copies one ticket moves at once
STREAMS_END = 10.0  # seconds a stopped transfer waits for its streams' threads
T = TypeVar("T")
PART_DAYS = 7.0  # a partial file no copy has written to for this long is removed
SWEEP_EVERY = 3600.0
COPIES_TIMEOUT = 10.0  # seconds to wait for the node to name a pool's dataset copies
HEX64 = re.compile(r"[0-9a-f]{64}")


class _Control(NamedTuple):
    """A transfer's control connection, and what its ticket allows."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ticket: Ticket
    id: str
    path: str


class _Teller:
    """Progress of a relayed copy, sent back to its client a few times a second."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.done = 0
        self.at = 0.0

    def start(self, total: int) -> None:
        wire.send_json(self.writer, Kind.PROGRESS, {"total": total})

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.at >= 0.2:
            self.at = now
            wire.send_json(self.writer, Kind.PROGRESS, {"done": self.done})


@dataclass
class _Session:
    ticket: str
    path: str  # normalised: what the transfer reads or writes
    receiver: Receiver | None = None
    sender: Sender | None = None
    writes: bool = False  # a put (rm, and other puts, wait for any copy)
    socks: set[Sock] = field(default_factory=set)  # its data connections, on their threads
    admitted: int = 0
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self) -> bool:
        """Holds a place for one more data connection; False once the session has as
        many as a client ever opens (each may hold a thread and a chunk's buffer)."""
        with self.lock:
            if self.ended or self.admitted >= MAX_STREAMS:
                return False
            self.admitted += 1
            return True

    def attach(self, sock: Sock) -> bool:
        with self.lock:
            if not self.ended:
                self.socks.add(sock)
            return not self.ended

    def detach(self, sock: Sock) -> None:
        with self.lock:
            self.socks.discard(sock)
            self.admitted -= 1

    async def stopped(self, wait: float = STREAMS_END) -> None:
        """``end``, then waits (a while) for its streams' threads to let go: one still in
        a write when the receiver closes its files would write through a closed (or
        reused) descriptor."""
        self.end()
        deadline = time.monotonic() + wait
        while self.admitted > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def end(self) -> None:
        """Ends its data connections: a stream still open when its transfer is over (or
        stopped) would hold a thread and a buffer for as long as its peer liked."""
        with self.lock:
            self.ended = True
            socks = list(self.socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class DataServer:
    def __init__(
        self,
        root: Path,
        pool: Callable[[], str],
        node_key: Callable[[], Awaitable[str]],
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        tls_dir: Path | None = None,
        quota: int | None = None,
        part_days: float = PART_DAYS,
        copies: Callable[[str], Awaitable[list[str]]] | None = None,
    ) -> None:
        root = root.resolve()  # a root that is a link (to a larger disk) is walked as its target
        self.root = root
        self.quota = Quota(root, quota, also=records.folder(root))
        self._homes: dict[str, Quota] = {}  # tenants' homes with a data quota
        self.pool, self._fetch_key = pool, node_key
        self._copies = copies
        self.host, self.port = host, port
        self.tls_default = tls
        self._tls: ssl.SSLContext | None = None
        self._fingerprint: str | None = None
        self._tls_dir = tls_dir or root / RESERVED
        self._key: str | None = None
        self._key_at = 0.0
        self._server: asyncio.Server | None = None
        self.sessions: dict[str, _Session] = {}
        self.hashes = HashCache()
        self.part_days = part_days
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> DataEndpoint:
        self.root.mkdir(parents=True, exist_ok=True)
        self._tls, self._fingerprint = await asyncio.to_thread(server_context, self._tls_dir)
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=wire.STREAM_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("data server for %s on %s:%d", self.root, self.host, self.port)
        self._sweeper = asyncio.create_task(self._sweep())
        return self.endpoint

    @property
    def endpoint(self) -> DataEndpoint:
        return DataEndpoint(
            host=self.host, port=self.port, tls=self.tls_default, fingerprint=self._fingerprint
        )

    async def _sweep(self) -> None:
        """Removes partial files that no copy has resumed for ``part_days``: they hold
        space (and quota) that nobody can see or free, since no path may name them."""
        while True:
            before = time.time() - self.part_days * 86400
            try:
                n = await asyncio.to_thread(sweep_parts, self.root, before)
                k = await asyncio.to_thread(sweep_fetches, self.root, before)
            except OSError as e:
                log.warning("cannot sweep old partial files: %s", e)
            else:
                if n or k:
                    log.info(
                        "removed %d partial files and %d fetches unfinished for %g days",
                        n,
                        k,
                        self.part_days,
                    )
            await asyncio.sleep(SWEEP_EVERY)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sockets.tune(writer.get_extra_info("socket"))  # a data connection keeps it detached
        try:
            await self._handle(reader, writer)
        except (TicketError, PathError, TransferError, ValidationError) as e:
            why = _reason(e)
            log.info("transfer refused: %s", why)
            with contextlib.suppress(Exception):
                wire.send_json(writer, Kind.ERROR, wire.error_body(why, e))
                await _drain(writer, ERROR_WAIT)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except TimeoutError:
            log.info("transfer connection closed: its peer was silent too long")
        except Exception:
            log.exception("data server error")
            with contextlib.suppress(Exception):
                wire.send_json(writer, Kind.ERROR, {"error": "the data server hit an error"})
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):  # a silent peer holds nothing
            hello = _hello((await wire.expect(reader, Kind.HELLO))[1])
            tls_data = bool(hello.get("starttls")) and hello.get("role") == "data"
            if hello.get("starttls") and not tls_data:
                wire.send(writer, Kind.OK)
                await _drain(writer)
                await writer.start_tls(self._tls)  # type: ignore[arg-type]
                hello = _hello((await wire.expect(reader, Kind.HELLO))[1])
        if tls_data:  # its handshake runs on its own thread, under its own timeout
            await sockets.in_thread(self._tls_data, sockets.detach(writer), loop)
            return
        if hello.get("role") == "data":
            s = await self._admit(hello)
            await sockets.in_thread(self._data, sockets.detach(writer), s)
            return
        t = Ticket.model_validate(hello.get("ticket"))
        direction = _direction(hello)
        path = await self._check(t, direction, str(hello.get("path", "")))
        tid, role = str(hello.get("transfer", "")), hello.get("role")
        ctl = _Control(reader, writer, t, tid, path)
        if role == "relay" and direction is Direction.get:
            await self._relay(ctl)
            return
        if role == "remove" and direction is Direction.delete:
            await self._remove(ctl, bool(hello.get("recursive")), _hex(hello.get("tree_hash")))
            return
        if role == "room" and direction is Direction.put:
            await self._room(ctl, hello.get("size"), hello.get("disk"))
            return
        if role == "list" and direction is Direction.get:
            query = ListQuery.model_validate(hello.get("list") or {})
            shown = await asyncio.to_thread(listing.page, self.root, self.pool(), path, query)
            wire.send_model(writer, Kind.OK, shown)
            await _drain(writer)
            return
        if direction is Direction.delete:
            raise Refused(f"ticket {t.claims.id} only removes /{path}")
        if role != "control" or not tid or tid in self.sessions:
            raise Refused("a transfer starts with one control connection of a new id")
        self._room_for(t.claims.id)
        writes = direction is Direction.put
        if writes and (busy := self._writing(path)) is not None:
            raise Refused(f"a copy into /{busy} is still moving: run this one once it ends")
        session = self.sessions[tid] = _Session(t.claims.id, path, writes=writes)
        try:
            wire.send(writer, Kind.OK)
            await _drain(writer)
            await (self._put if direction is Direction.put else self._get)(ctl)
        finally:
            self.sessions.pop(tid, None)
            session.end()

    def _room_for(self, ticket: str) -> None:
        """Refuses a copy past the most this server moves at once, and past the most one
        ticket moves: each holds threads and a chunk's buffer a stream, and a ticket is
        for one copy (and its reruns while the last one drains)."""
        if len(self.sessions) >= MAX_SESSIONS:
            raise Refused(
                f"this data server is moving {MAX_SESSIONS} copies, the most it takes at "
                "once: run this one when others end"
            )
        if sum(s.ticket == ticket for s in self.sessions.values()) >= PER_TICKET:
            raise Refused(f"ticket {ticket} has {PER_TICKET} copies moving, the most one may")

    def _writing(self, path: str) -> str | None:
        """The path of a put still moving at, above or below ``path``: two puts into
        one place at once would each resume the other's partial files."""
        for s in self.sessions.values():
            if s.writes and (within(s.path, path) or within(path, s.path)):
                return s.path
        return None

    async def _admit(self, hello: dict[str, Any]) -> _Session:
        """The session a data connection joins, once its ticket checks out."""
        t = Ticket.model_validate(hello.get("ticket"))
        await self._check(t, _direction(hello), str(hello.get("path", "")))
        tid = str(hello.get("transfer", ""))
        s = self.sessions.get(tid)
        if s is None or s.ticket != t.claims.id or (s.receiver is None and s.sender is None):
            raise Refused(f"no transfer {tid!r} under ticket {t.claims.id} is ready for data")
        if not s.admit():
            raise Refused(f"transfer {tid!r} has {MAX_STREAMS} data connections, the most it may")
        return s

    def _data(self, sock: Sock, s: _Session) -> None:
        """A data connection's whole life after admission, on a thread of its own. A
        write this server cannot make (a full disk, a directory it may not enter) is
        told to the sender, which stops the copy with the reason."""
        try:
            if not s.attach(sock):
                return  # the transfer ended meanwhile
            sock.settimeout(None)  # a TLS stream's handshake had one
            sockets.send(sock, Kind.OK)
            if s.receiver is not None:
                s.receiver.stream(sock)
            elif s.sender is not None:
                s.sender.stream(sock)
        except ConnectionError:
            pass
        except (TransferError, OSError) as e:
            why = str(e) if isinstance(e, TransferError) else _write_error(e)
            log.info("transfer %s stopped: %s", s.ticket, why)
            with contextlib.suppress(Exception):
                sockets.send_json(sock, Kind.ERROR, wire.error_body(why, e))
        finally:
            s.detach(sock)
            sockets.shut(sock)

    def _tls_data(self, raw: Sock, loop: asyncio.AbstractEventLoop) -> None:
        """A TLS data connection: the handshake and the ticket come on this thread too."""
        sock = raw
        # A timeout on each read would let a peer that trickles a byte at a time hold the
        # thread for ever: the whole handshake has one deadline, as on the event loop.
        # Until the TLS socket exists its handshake is bounded by the timeout, which
        # CPython holds to the whole handshake; after it, each read is: hence the timer.
        # The timer shuts a duplicate of the socket: shutdown acts on the connection, and
        # the TLS socket's own would drop its TLS state under the reader.
        try:
            guard = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:  # out of descriptors: no connection can be served now
            sockets.shut(raw)
            return
        late = threading.Timer(HANDSHAKE_TIMEOUT, _wake, (guard,))
        late.start()
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            sockets.send(raw, Kind.OK)
            assert self._tls is not None
            sock = self._tls.wrap_socket(raw, server_side=True)
            hello = _hello(sockets.expect(sock, Kind.HELLO))
            s = asyncio.run_coroutine_threadsafe(self._admit(hello), loop).result(ADMIT_TIMEOUT)
        except (TicketError, PathError, TransferError, ValidationError) as e:
            log.info("transfer refused: %s", e)
            with contextlib.suppress(Exception):
                sockets.send_json(sock, Kind.ERROR, wire.error_body(str(e), e))
            sockets.shut(sock)
            return
        except (OSError, ValueError, TimeoutError):
            sockets.shut(sock)
            return
        finally:
            late.cancel()
            late.join()
            guard.close()
        self._data(sock, s)

    async def _remove(self, ctl: _Control, recursive: bool, tree: str | None = None) -> None:
        """``tree``: remove the path only as a copy of that tree (a dataset version's)."""
        moving = [
            s.path
            for s in self.sessions.values()
            if within(s.path, ctl.path) or within(ctl.path, s.path)
        ]
        if moving:
            raise Refused(f"a copy of /{moving[0]} is still moving: remove it when it ends")
        key = f"remove-{secrets.token_hex(8)}"  # no put starts there while it is checked
        self.sessions[key] = _Session(ctl.ticket.claims.id, ctl.path, writes=True)
        try:
            if tree is not None:
                await self._only(ctl.path, tree)
            gone = await asyncio.to_thread(
                removal.remove, self.root, self.pool(), ctl.path, recursive
            )
        finally:
            self.sessions.pop(key, None)
            for q in (self.quota, *self._homes.values()):
                q.changed()
        await asyncio.to_thread(records.forget, self.root, ctl.path)
        log.info("removed %s (%d files, %d bytes)", gone.path, gone.files, gone.bytes)
        wire.send_model(ctl.writer, Kind.OK, gone)
        await _drain(ctl.writer)

    async def _only(self, path: str, tree: str) -> None:
        """Refuses to remove ``path`` as a copy of ``tree`` unless that is what it holds
        now: a version registered at the wrong path, or a copy changed or added to since,
        must not take data that is not the version's with it. Files whose hashes this
        server keeps are not read again."""
        source = confine(self.root, path, links=False)
        if not source.exists():
            return  # the removal says so
        try:
            src = await asyncio.to_thread(build, source, CHUNK, self.hashes)
        except (OSError, TransferError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise Refused(
                f"/{path} cannot be read to check that it is the version's copy ({why}): {KEPT}",
                Code.KEPT,
            ) from None
        held = src.manifest.tree_hash
        if held == tree:
            return
        try:  # where a put recorded the version there, what was added since can be named
            m = await asyncio.to_thread(records.manifest_of, self.root, path)
        except (OSError, ValueError):
            m = None
        extra = [] if m is None or m.tree_hash != tree or m.single else await self._beside(path, m)
        what = f"{_some(extra)} besides the version's copy" if extra else f"tree {held[:12]}…"
        raise Refused(
            f"/{path} holds {what}, not the version's tree {tree[:12]}… alone: {KEPT}", Code.KEPT
        )

    async def _relay(self, ctl: _Control) -> None:
        """Pool to pool: this server puts its own file or tree straight into another pool,
        under the put ticket the client brings, and reports progress on the way."""
        key = f"relay-{secrets.token_hex(8)}"
        self._room_for(ctl.ticket.claims.id)
        self.sessions[key] = _Session(ctl.ticket.claims.id, ctl.path)
        try:
            await self._relay_from(ctl)
        finally:
            self.sessions.pop(key, None)

    async def _relay_from(self, ctl: _Control) -> None:
        source = confine(self.root, ctl.path, links=False)
        if not source.exists():
            raise TransferError(f"/{ctl.path}: no such file or directory in the pool", Code.MISSING)
        welcome = {"total_bytes": total_size(source), "file": source.is_file()}
        wire.send_json(ctl.writer, Kind.OK, welcome)
        await _drain(ctl.writer)
        asked = wire.expect_model(ctl.reader, Kind.RELAY, RelayFrame)
        relay = await _within(IDLE_TIMEOUT, asked, "RELAY")
        grant = relay.grant
        await self._relayable(ctl.ticket, grant)
        tell = _Teller(ctl.writer)
        options = client.Options(
            streams=relay.streams,
            sync=relay.sync,
            verify=relay.verify,
            tls=relay.tls,
            compress=relay.compress,
            watcher=tell,
            faults=Faults(),
            hashes=self.hashes,
            tree_hash=relay.tree_hash,
            exact=relay.exact,
        )
        put = asyncio.ensure_future(
            client.put(grant, source, options, where=f"{self.pool()}:/{ctl.path}")
        )
        gone = asyncio.ensure_future(ctl.reader.read(1))  # the client sends nothing more
        try:
            await asyncio.wait({put, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not put.done():  # its client went away (Ctrl-C): so does the copy
                put.cancel()
                with contextlib.suppress(BaseException):
                    await put
        if put.cancelled():
            log.info("relay of /%s stopped: its client went away", ctl.path)
            raise ConnectionResetError("the client went away")
        result = put.result()
        result.source = f"{self.pool()}:/{ctl.path}"
        done = result.model_dump(mode="json", exclude_none=True)  # fields added since: if used
        wire.send_json(ctl.writer, Kind.DONE, {"result": done})
        await _drain(ctl.writer)

    async def _keep_out(self, path: str, m: Manifest) -> None:
        """Refuses a put that would write into a dataset's copy. The node names the
        copies there are now, not when the ticket was granted: a version published since
        is kept out too. Without an answer the put stops, its partial files kept for a
        rerun to resume: integrity first."""
        if self._copies is None:
            return
        try:
            async with asyncio.timeout(COPIES_TIMEOUT):
                held = await self._copies(path)
        except Exception as e:
            why = str(e) or type(e).__name__
            raise TransferError(
                f"cannot ask the node which paths hold dataset copies ({why}); "
                "run the copy again once the node answers"
            ) from e
        await asyncio.to_thread(_keep_out, held, path, m)

    async def _relayable(self, mine: Ticket, grant: TransferGrant) -> None:
        """This server connects where a relay's put grant says, and shows its ticket
        there: so the ticket must be the node's, the same tenant's as the one this
        connection showed, and for the data server it names (the node signs where that
        is), not for a host and port of the client's choosing."""
        t = grant.ticket
        await self._check(t, Direction.put, grant.path, pool=t.claims.pool)
        if t.claims.tenant != mine.claims.tenant:
            raise TicketError(f"ticket {t.claims.id} is tenant {t.claims.tenant}'s, not yours")
        if t.claims.endpoint != tickets.address(grant.endpoint):
            raise TicketError(
                f"ticket {t.claims.id} is for the data server at {t.claims.endpoint}, "
                f"not {tickets.address(grant.endpoint)}"
            )

    async def _check(
        self, t: Ticket, direction: Direction, path: str, pool: str | None = None
    ) -> str:
        if self._key is None:
            await self._refresh_key()
        try:
            return self._verify(t, direction, path, pool)
        except BadSignature:
            if time.monotonic() - self._key_at < KEY_REFRESH:
                raise
        await self._refresh_key()
        return self._verify(t, direction, path, pool)

    def _verify(self, t: Ticket, direction: Direction, path: str, pool: str | None) -> str:
        assert self._key is not None
        if direction is Direction.put:
            writable_name(path)
        return tickets.check(t, self._key, pool=pool or self.pool(), direction=direction, path=path)

    async def _refresh_key(self) -> None:
        try:
            self._key = await self._fetch_key()
        except Exception as e:
            raise TransferError(f"cannot get the node's key to check tickets: {e}") from e
        self._key_at = time.monotonic()

    def _places(self, path: str, m: Manifest) -> tuple[list[Path], list[Path]]:
        if m.single:
            return [confine(self.root, path, links=False)], []

        parents: dict[str, Path] = {}

        def under(rel: str) -> Path:
            # Each directory is confined once; a file's own name may be a link, which the
            # receiver replaces rather than follows (O_NOFOLLOW, rename over it).
            rel = normalise(rel)
            if not rel:
                raise PathError("a file in a tree needs a name")
            head, _, name = rel.rpartition("/")
            where = parents.get(head)
            if where is None:
                where = parents[head] = confine(self.root, f"{path}/{head}", links=False)
            return where / name

        finals = [under(e.path) for e in m.files]
        if len(set(finals)) < len(finals):
            raise PathError("two files of the manifest land at one path")
        top = confine(self.root, path, links=False)  # made even for an empty tree
        return finals, [top, *(under(d) for d in m.dirs)]

    async def _room(self, ctl: _Control, size: Any, disk: Any = None) -> None:
        """Whether a put of ``size`` bytes (``disk`` of them not holes) could fit, asked
        before its source is hashed (which takes minutes for a large one). What lies at
        the path now counts as freed, as though the put replaced it all: the put itself
        checks exactly."""
        _, writer, t, _, path = ctl
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TransferError("a room question states its size: bytes, a whole number")
        if disk is None:
            disk = size
        if not isinstance(disk, int) or isinstance(disk, bool) or not 0 <= disk <= size:
            raise TransferError("a room question's disk is bytes, a whole number, at most its size")
        if size > t.claims.max_bytes:
            raise TicketError(
                f"ticket {t.claims.id} allows {t.claims.max_bytes} bytes; the copy has {size}"
            )
        here = confine(self.root, path, links=False)
        held, partial = await asyncio.to_thread(_present, here)
        adds = size - held
        await self.quota.check(adds)
        home = self.home_quota(t.claims.tenant, t.claims.home_quota, path)
        if home is not None:
            await home.check(adds, t.claims.home_quota)
        # What partial files hold is on the disk already.
        await asyncio.to_thread(fits, self.root, disk - partial, 0, ROOT)
        wire.send_json(writer, Kind.OK, {"size": size})
        await _drain(writer)

    async def _put(self, ctl: _Control) -> None:
        reader, writer, t, tid, path = ctl
        frame = await _within(
            IDLE_TIMEOUT, wire.expect_model(reader, Kind.MANIFEST, ManifestFrame), "MANIFEST"
        )
        m = frame.manifest
        total = m.total_bytes
        if total > t.claims.max_bytes:
            raise TicketError(
                f"ticket {t.claims.id} allows {t.claims.max_bytes} bytes; the manifest has {total}"
            )
        if m.tree_hash != await asyncio.to_thread(tree_hash, m.files, m.dirs):
            raise TransferError("the manifest's tree hash does not match its entries")
        finals, dirs = await asyncio.to_thread(self._places, path, m)
        await self._keep_out(path, m)
        if frame.exact:
            await self._nothing_else(path, m)
        # A version is what its tree hash says: a file there already stays only where its
        # content is the manifest's, whatever the sync level asked.
        sync = frame.sync
        if (frame.exact or frame.sole) and sync is not SyncLevel.none:
            sync = SyncLevel.checksum
        receiver = Receiver(
            m,
            finals,
            dirs,
            sync,
            verify=frame.verify or frame.exact,
            root=self.root.resolve(),
        )
        plan = await asyncio.to_thread(receiver.plan)
        k = receiver.counters  # present chunks take no more disk, nor holes any
        adding = total - k.bytes_skipped - k.bytes_holes
        await asyncio.to_thread(fits, self.root, adding, plan.entries, ROOT)
        adds = total - receiver.counters.bytes_skipped - plan.replaced
        await self.quota.claim(adds)
        home = self.home_quota(t.claims.tenant, t.claims.home_quota, path)
        try:
            if home is not None:
                await home.claim(adds, t.claims.home_quota)
        except BaseException:
            self.quota.settle(adds, False)
            raise
        landed = False
        try:
            try:  # long for a large file: a thread of its own, not the loop's pool
                await sockets.in_thread(receiver.seed, plan)
            except OSError as e:
                raise TransferError(_write_error(e)) from None
            self.sessions[tid].receiver = receiver  # data streams may join from here
            wire.send_json(writer, Kind.NEED, plan.wire())
            await _drain(writer)
            c = receiver.counters
            await _while_moving(reader, Kind.COMMIT, lambda: c.chunks)
            landed = receiver.complete  # in place or in partial files: held either way
            try:
                await self._keep_out(path, m)  # a copy published while this one moved
            except KeptOut:
                landed = False
                await asyncio.to_thread(receiver.discard)
                raise
            if frame.exact:
                await self._nothing_else(path, m)  # nor written beside it meanwhile
            try:
                await asyncio.to_thread(receiver.commit)
            except OSError as e:  # what landed stays, and a rerun of the copy resumes
                raise TransferError(f"the commit stopped: {_write_error(e)}") from None
            if frame.exact and not m.single:  # nor an earlier copy's partial files
                here = await asyncio.to_thread(confine, self.root, path, False)
                await asyncio.to_thread(drop_parts, here)
            await asyncio.to_thread(records.write, self.root, path, m)
            c = receiver.counters
            done: dict[str, object] = {"files": c.files, "faults": c.faults}
            if frame.sole:  # what cannot be looked at counts as merged: never recorded
                done["merged"] = True
                with contextlib.suppress(OSError, PathError):
                    done["merged"] = not m.single and bool(await self._beside(path, m))
            wire.send_json(writer, Kind.DONE, {**done, "tree_hash": m.tree_hash})
            await _drain(writer)
        finally:
            await self.sessions[tid].stopped()  # no stream writes through a closed descriptor
            receiver.close()
            for q in (self.quota, home):
                if q is not None:
                    q.settle(adds, landed, receiver.counters.bytes)

    async def _nothing_else(self, path: str, m: Manifest) -> None:
        """Refuses a put that must be all its destination holds (a dataset's version)
        where something else is there: a name nobody owns yet is writable by every
        tenant, and a version would then hold what another tenant put beside it."""
        if m.single:
            return  # one file: it replaces whatever is at ``path``
        extra = await self._beside(path, m)
        if extra:
            raise TransferError(
                f"/{path} holds {_some(extra)}, which this copy does not: a dataset "
                "version holds exactly what was copied; publish it as another version",
                Code.OCCUPIED,
            )

    async def _beside(self, path: str, m: Manifest) -> list[str]:
        """What the directory at ``path`` holds besides ``m``'s tree."""
        return await asyncio.to_thread(_extras, confine(self.root, path, links=False), m)

    def home_quota(self, tenant: str, limit: int | None, path: str) -> Quota | None:
        """The account of the tenant's home that a write at ``path`` lands in, where
        there is a cap (``limit``, as the ticket or staging plan states it: the node's
        admin may change it, and each claim names the cap it is held to). The agent's
        job outputs claim from the same account as puts."""
        home = f"home/{tenant}"
        if limit is None or not within(home, path):
            return None
        q = self._homes.get(home)
        if q is None:
            q = self._homes[home] = Quota(self.root / home, limit, f"tenant {tenant}'s home")
        return q

    async def _get(self, ctl: _Control) -> None:
        reader, writer, _, tid, path = ctl
        source = confine(self.root, path, links=False)
        if not source.exists():
            raise TransferError(f"/{path}: no such file or directory in the pool", Code.MISSING)
        try:
            whole = source == self.root.resolve()  # its .cnet is this server's own
            src = await asyncio.to_thread(build, source, CHUNK, self.hashes, whole)
        except OSError as e:  # named as the pool knows it, not by the server's own paths
            raise TransferError(
                f"/{path}: the data server cannot read it: {e.strerror or e}"
            ) from None
        frame = ManifestFrame(manifest=src.manifest, left_out=src.left_out)
        wire.send_model(writer, Kind.MANIFEST, frame, {"sole"})
        await _drain(writer)
        m = src.manifest  # the client hashes its partial files first: a slow disk's time
        wait = min(NEED_TIMEOUT, IDLE_TIMEOUT + round(m.total_bytes / HASH_FLOOR))
        asked = wire.expect(reader, Kind.NEED, limit=need_limit(m))
        _, body = await _within(wait, asked, "NEED")
        need = await asyncio.to_thread(checked_need, body, m)
        packed = body.get("compress")
        if not isinstance(packed, bool):
            packed = await asyncio.to_thread(compress.worth_it, src.paths)
        sender = Sender(src.manifest, src.paths, need.chunks, compress=packed)
        self.sessions[tid].sender = sender
        wire.send(writer, Kind.OK)
        await _drain(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await _while_moving(reader, Kind.DONE, lambda: sender.remaining)
        finally:
            if sender.remaining:  # refused or cut short: hash afresh next time
                self.hashes.forget(src.paths)


def _some(names: list[str]) -> str:
    return repr(names[0]) + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _extras(root: Path, m: Manifest) -> list[str]:
    """What ``root`` holds that the manifest does not name (its partial files aside)."""
    named = {normalise(d) for d in m.dirs}
    for e in m.files:
        rel = normalise(e.path)
        named.add(rel)
        head = rel.rpartition("/")[0]
        while head:
            named.add(head)
            head = head.rpartition("/")[0]
    extra: list[str] = []
    for here, dirs, files in os.walk(root):  # links are not followed
        base = Path(here).relative_to(root).as_posix()
        for name in (*dirs, *files):
            rel = name if base == "." else f"{base}/{name}"
            if rel not in named and not name.endswith(PART):  # never seen, never kept
                extra.append(rel)
        dirs[:] = [d for d in dirs if (d if base == "." else f"{base}/{d}") in named]
    return sorted(extra)


async def _within(seconds: float, frame: Awaitable[T], what: str) -> T:
    """A control frame the peer owes, within ``seconds``: a silent peer would hold its
    session (and the path, for a put) for as long as it liked."""
    try:
        async with asyncio.timeout(seconds):
            return await frame
    except TimeoutError:
        raise TransferError(f"no {what} came within {seconds:g} s: the copy is stopped") from None


async def _drain(writer: asyncio.StreamWriter, idle: float | None = None) -> None:
    """What this server wrote, taken by the peer: a peer that takes none of it for
    ``idle`` seconds (the idle limit) would hold its session, the path and its quota
    claim for as long as it liked. A slow one that keeps reading a large frame is not
    cut off."""
    idle = IDLE_TIMEOUT if idle is None else idle
    left = writer.transport.get_write_buffer_size()
    while True:
        try:
            async with asyncio.timeout(idle):
                await writer.drain()
            return
        except TimeoutError:
            now = writer.transport.get_write_buffer_size()
            if now >= left:
                raise TransferError(
                    f"the peer took nothing for {idle:g} s: the copy is stopped"
                ) from None
            left = now


def _present(here: Path) -> tuple[int, int]:
    """Bytes at a put's destination, its partial files included (a rerun counts the
    chunks they hold as held), and of those, the partial files' bytes (on the disk
    already, where a finished file's are freed only once it is replaced). What is neither
    a file nor a directory holds none."""
    try:
        st = here.lstat()
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        total = partial = 0
        for p, found in files_under(here):
            total += found.st_size
            partial += found.st_size if p.endswith(PART) else 0
        return total, partial
    final = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0
    try:
        part = part_of(here).lstat()
        partial = part.st_size if stat.S_ISREG(part.st_mode) else 0
    except OSError:
        partial = 0
    return final + partial, partial


def _reason(e: Exception) -> str:
    """What an ERROR frame says: short (the frame is small) and, for a malformed request,
    its first fault only."""
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        why = f"malformed request: {where}: {first['msg']}"
    else:
        why = str(e)
    return why if len(why) <= MAX_REASON else why[: MAX_REASON - 1] + "…"


def _hello(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise wire.WireError("a HELLO is a JSON object")
    return body


def _wake(guard: Sock) -> None:
    """Ends the blocking reads of a connection's thread, which then closes it."""
    with contextlib.suppress(OSError):
        guard.shutdown(socket.SHUT_RDWR)


def _direction(hello: dict[str, Any]) -> Direction:
    try:
        return Direction(str(hello.get("direction")))
    except ValueError:
        raise wire.WireError("a HELLO names a direction: put, get or delete") from None


async def _while_moving(
    reader: asyncio.StreamReader, kind: Kind, moved: Callable[[], object]
) -> None:
    """Waits for the control frame that ends a transfer for as long as its chunks keep
    moving: one that stalls (a peer gone quiet, or holding a quota claim on purpose)
    is stopped, and its partial files are kept for a rerun to resume."""
    frame = asyncio.ensure_future(wire.expect(reader, kind))
    try:
        last = moved()
        while not (await asyncio.wait({frame}, timeout=IDLE_TIMEOUT))[0]:
            if (now := moved()) == last:
                raise TransferError(
                    f"no chunk moved for {IDLE_TIMEOUT:g} s: the copy is stopped; "
                    "run it again to resume"
                )
            last = now
        frame.result()
    finally:
        frame.cancel()


def _hex(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and HEX64.fullmatch(value)):
        return value
    raise wire.WireError("a tree hash is 64 lowercase hex digits")


class KeptOut(TransferError):
    """A put that would write into a dataset's copy."""


def _keep_out(copies: list[str], path: str, m: Manifest) -> None:
    """A put above a copy may go on, as long as nothing it holds lands inside it: each
    landing path's parents are looked up, so the cost is the tree's depth, not the
    number of copies."""

    def refuse(copy: str, rel: str) -> KeptOut:
        return KeptOut(
            f"/{copy} holds a dataset's copy, and versions never change: "
            f"this copy would write /{rel}"
        )

    below = set()
    for k in copies:
        k = normalise(k)
        if within(k, path):
            raise refuse(k, path)
        if within(path, k):
            below.add(k)
    if not below:
        return
    if m.single:
        return  # one file at ``path``, which no copy is at or above
    for x in [*(e.path for e in m.files), *m.dirs]:
        rel = normalise(f"{path}/{x}")
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            if (head := "/".join(parts[:i])) in below:
                raise refuse(head, rel)


def _write_error(e: OSError) -> str:
    """An error of this server's file system, without the server's own paths."""
    return f"the pool's data server cannot write the data: {e.strerror or e}"
