"""Data connections as plain blocking sockets, each served by its own thread.

The handshake (HELLO, tickets, sessions) runs on the event loop; once a data connection
is admitted it leaves the loop. Bulk bytes then move with ``recv_into`` straight into a
reused chunk buffer and with ``sendfile`` straight from the page cache, and hashing and
``pwrite`` release the GIL, so several streams keep several cores busy. Through asyncio
streams every byte was copied into and out of a growing buffer on the loop's one thread,
which held a transfer to a fraction of the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from computenet.transfer.wire import HEADER, Kind, control, header, parse_header, unexpected

T = TypeVar("T")
Sock = socket.socket  # an ssl.SSLSocket is one too


def recv_exact(sock: Sock, view: memoryview) -> bool:
    """Fills ``view``; False on a clean end of stream before its first byte."""
    flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got, flags)
        if n == 0:
            if got == 0:
                return False
            raise ConnectionResetError("the peer closed the stream inside a frame")
        got += n
    return True


def read_frame(sock: Sock, kinds: tuple[Kind, ...] = ()) -> tuple[Kind, bytes] | None:
    """The next frame, or None at a clean end of stream; one of another kind than
    ``kinds`` (or ERROR) is refused on its header, before its payload is held."""
    raw = bytearray(HEADER.size)
    if not recv_exact(sock, memoryview(raw)):
        return None
    kind, length = parse_header(raw)
    unexpected(kind, kinds)
    payload = bytearray(length)
    if length and not recv_exact(sock, memoryview(payload)):
        raise ConnectionResetError("the peer closed the stream inside a frame")
    return kind, bytes(payload)


def send(sock: Sock, kind: Kind, payload: bytes = b"") -> None:
    sock.sendall(header(kind, len(payload)) + payload)


def send_json(sock: Sock, kind: Kind, body: Any) -> None:
    send(sock, kind, json.dumps(body, separators=(",", ":")).encode())


def expect(sock: Sock, *kinds: Kind) -> Any:
    """The next control frame's body; an ERROR frame raises ``Refused``."""
    frame = read_frame(sock, kinds)
    if frame is None:
        raise ConnectionResetError("the peer closed the stream")
    return control(*frame, kinds)


def readable(sock: Sock, timeout: float) -> bool:
    """Whether a read would find bytes now (or within ``timeout`` seconds)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], timeout)[0])


def detach(writer: asyncio.StreamWriter) -> Sock:
    """Takes a connection off the event loop as a blocking socket. Only for a connection
    whose peer now waits for an answer, so that no bytes sit in the stream's buffer."""
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]
    raw = transport.get_extra_info("socket")
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    transport.abort()
    sock.setblocking(True)
    return sock


SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 20


class Pipe:
    """A pipe to splice through, socket to file: the bytes go from the socket's buffers to
    the page cache without being copied into this process and out again."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def splice(
        self, sock: Sock, fd: int, offset: int, n: int, writing: threading.Lock | None = None
    ) -> None:
        """Moves exactly ``n`` bytes from ``sock`` to ``fd`` at ``offset``. Streams that
        write one file take ``writing`` around each write: the kernel serialises writes to
        a file anyway, and a stream that waits here sleeps where one waiting on the
        file's own lock would spin, taking the core another stream needs to hash."""
        while n:
            k = os.splice(sock.fileno(), self.w, min(n, self.size), flags=os.SPLICE_F_MOVE)
            if k == 0:
                raise ConnectionResetError("the sender closed the stream inside a chunk")
            n -= k
            with writing or contextlib.nullcontext():
                while k:
                    m = os.splice(self.r, fd, k, offset_dst=offset, flags=os.SPLICE_F_MOVE)
                    offset += m
                    k -= m

    @staticmethod
    def discard(sock: Sock, n: int) -> None:
        """Reads ``n`` bytes and drops them: a chunk this end will not take."""
        scratch = memoryview(bytearray(min(n, PIPE_SIZE) or 1))
        while n:
            k = min(n, len(scratch))
            if not recv_exact(sock, scratch[:k]):
                raise ConnectionResetError("the sender closed the stream inside a chunk")
            n -= k

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


KEEPALIVE = (60, 10, 6)  # idle seconds, probe interval, probes: a lost peer within 2 min


def tune(sock: Sock) -> None:
    """Every connection, control and data: no Nagle delay on small frames, and keepalive
    probes, so that a side blocked reading from a host that vanished (power, network)
    learns it instead of waiting for ever."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = KEEPALIVE
    with contextlib.suppress(AttributeError, OSError):  # Linux names; elsewhere the defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def shut(sock: Sock) -> None:
    """Wakes any thread blocked on ``sock`` and closes it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Runs ``fn`` on a thread of its own, not the loop's bounded pool: a transfer holds a
    thread per stream for its whole length, and the pool must stay free for short work."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def finish(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(finish, None, e)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(finish, result, None)

    threading.Thread(target=run, name=f"cnet-{getattr(fn, '__name__', 'io')}", daemon=True).start()
    return await done
