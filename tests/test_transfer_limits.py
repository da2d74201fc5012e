"""The data server's protective limits, end to end: a real node and agent, spoken to frame
by frame with raw sockets. A peer that never finishes its HELLO, a client that is admitted
and then goes quiet, a NEED that does not match the manifest, a frame longer than the wire
allows: each is ended within its limit, holds nothing after, and leaves the agent serving
real copies. The agent stops stalls after ``IDLE`` seconds (``CNET_TRANSFER_IDLE``, which
sets the handshake's limit too), so each limit is seen in seconds, not minutes.

One node on SQLite only: these limits are the data server's, and no test touches the
node's database beyond asking it for tickets.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from computenet.model import TransferGrant
from computenet.transfer import client as transfer
from computenet.transfer import wire
from computenet.transfer.tls import client_context
from conftest import Network, _network
from test_transfer_hostile import Peer, entry, grant, manifest

pytestmark = pytest.mark.slow

IDLE = 3  # seconds the agent lets a handshake or a transfer stall
BOUND = IDLE + 20  # a generous bound on "ended within its limit"
POOL = "limits"


@pytest.fixture(scope="module")
def net(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """A node and one agent that stops stalled transfers after ``IDLE`` seconds and holds
    at most 1 MiB, so that a quota claim left behind shows in the next put."""
    tmp = tmp_path_factory.mktemp("limits")
    for n in _network("sqlite", tmp, request):
        n.overrides["CNET_TRANSFER_IDLE"] = str(IDLE)
        try:
            n.start_agent(POOL, "--no-calibrate", "--data-quota", "1M")
        finally:
            del n.overrides["CNET_TRANSFER_IDLE"]
        yield n


@pytest.fixture
def pool(net: Network) -> str:
    return net.wait_pool(POOL)


def root(net: Network) -> Path:
    return net.home / "agents" / POOL / "data"


def agent_holds(net: Network, sock: socket.socket) -> bool:
    """Whether the agent (or a process under it) still has the server's end of ``sock``
    open: a connection it dropped holds no descriptor there, whatever state TCP is in."""
    port = sock.getsockname()[1]
    popen = net.agents[POOL].popen
    assert popen is not None
    top = psutil.Process(popen.pid)
    for p in [top, *top.children(recursive=True)]:
        try:
            conns = p.net_connections("tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == port for c in conns):
            return True
    return False


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the other end closes ``sock`` within ``timeout`` seconds (what it still
    sends before that, an ERROR frame or a TLS session ticket, is read and passed over)."""
    deadline = time.monotonic() + timeout
    was = sock.gettimeout()
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(min(left, 0.2))
            try:
                if sock.recv(1 << 16) == b"":
                    return True
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                return True
        return False
    finally:
        sock.settimeout(was)


def raw(g: TransferGrant) -> socket.socket:
    return socket.create_connection((g.endpoint.host, g.endpoint.port), timeout=BOUND)


def cnet_ok(net: Network, *args: str) -> None:
    proc = net.cnet(*args, token=net.token)
    assert proc.returncode == 0, proc.stderr


def control(g: TransferGrant, direction: str = "put") -> tuple[Peer, str]:
    """A transfer's control connection, admitted (its HELLO answered OK)."""
    tid = secrets.token_hex(8)
    peer = Peer(g)
    peer.sock.settimeout(BOUND)
    peer.hello("control", tid, direction=direction)
    assert peer.read()[0] is wire.Kind.OK
    return peer, tid


def data_stream(g: TransferGrant, tid: str, direction: str = "put") -> Peer:
    """A data connection joined to transfer ``tid``."""
    p = Peer(g)
    p.sock.settimeout(BOUND)
    p.hello("data", tid, direction=direction)
    assert p.read()[0] is wire.Kind.OK
    return p


def test_a_peer_that_never_finishes_its_hello_is_dropped_and_blocks_no_copy(
    net: Network, pool: str, tmp_path: Path
) -> None:
    """Before a ticket is shown a peer may hold a connection only for the handshake's
    time, however it stalls: silent, inside the header, inside the body, or sending a
    byte now and then (the limit is on the whole HELLO, not on each read). Meanwhile
    real copies go through both ways, and after it the agent serves them as before."""
    g = grant(net, pool, "/limits/hs/x")
    start = time.monotonic()
    silent = raw(g)
    in_header = raw(g)
    in_header.sendall(wire.header(wire.Kind.HELLO, 1000)[:5])
    in_body = raw(g)
    in_body.sendall(wire.header(wire.Kind.HELLO, 1000) + b'{"role": "control", ')
    trickle = raw(g)
    trickle.sendall(wire.header(wire.Kind.HELLO, 1000))
    stalled = [silent, in_header, in_body, trickle]
    try:
        # During: a put and a get through the SDK, each well inside the handshake's time.
        src = tmp_path / "during.bin"
        src.write_bytes(os.urandom(100_000))
        with net.client() as c:
            up = c.ticket(
                {"pool": pool, "path": "/limits/hs/during.bin", "direction": "put", "size": 100_000}
            )
            down = c.ticket({"pool": pool, "path": "/limits/hs/during.bin", "direction": "get"})
        asyncio.run(transfer.put(up, src))
        asyncio.run(transfer.get(down, tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        assert all(agent_holds(net, s) for s in stalled), "the copies ran after the stalls ended"

        ended: dict[int, float] = {}
        while len(ended) < len(stalled) and time.monotonic() - start < BOUND:
            for i, s in enumerate(stalled):
                if i not in ended and closed_by_peer(s, 0.1):
                    ended[i] = time.monotonic() - start
            if 3 not in ended:
                try:
                    trickle.send(b" ")  # one byte of the HELLO's body every 0.5 s or so
                except OSError:
                    ended[3] = time.monotonic() - start
            time.sleep(0.1)
        assert sorted(ended) == [0, 1, 2, 3], f"still open after {BOUND} s: {ended}"
        assert not any(agent_holds(net, s) for s in stalled)
    finally:
        for s in stalled:
            s.close()
    # After: the agent serves a normal copy, and the path it wrote can be removed.
    cnet_ok(net, "cp", str(src), f"{pool}:/limits/hs/after.bin")
    assert (root(net) / "limits" / "hs" / "after.bin").read_bytes() == src.read_bytes()
    cnet_ok(net, "rm", "-r", f"{pool}:/limits/hs")


def test_a_put_quiet_before_its_first_chunk_lets_go_of_its_quota_claim_and_path(
    net: Network, pool: str, tmp_path: Path, peers: list[Peer]
) -> None:
    """A client that is admitted and given NEED, and then sends no chunk (its data
    connection joined, and silent), is stopped after the idle time: its data connection
    is closed, and its claim on the quota and on the path are let go, so that a rerun of
    a size that only fits once the claim is gone goes through."""
    size = 700_000  # twice over the 1 MiB quota, once well under it
    data = os.urandom(size)
    g = grant(net, pool, "/limits/quiet/a.bin", size=size)
    ctl, tid = control(g)
    peers.append(ctl)
    ctl.send_json(wire.Kind.MANIFEST, {"manifest": manifest([entry(data, 1 << 20)], 1 << 20)})
    kind, need = ctl.read()
    assert kind is wire.Kind.NEED and need["need"] == [[0]]
    stream = data_stream(g, tid)
    peers.append(stream)
    start = time.monotonic()
    assert f"no chunk moved for {IDLE:g} s" in ctl.refusal()
    assert closed_by_peer(stream.sock, BOUND - (time.monotonic() - start))
    assert closed_by_peer(ctl.sock, 5)
    assert not agent_holds(net, ctl.sock) and not agent_holds(net, stream.sock)
    assert not (root(net) / "limits" / "quiet" / "a.bin").exists()

    src = tmp_path / "a.bin"
    src.write_bytes(data)
    cnet_ok(net, "cp", str(src), f"{pool}:/limits/quiet/a.bin")
    assert (root(net) / "limits" / "quiet" / "a.bin").read_bytes() == data
    cnet_ok(net, "rm", "-r", f"{pool}:/limits/quiet")


def test_a_put_quiet_inside_a_chunk_is_stopped_hides_its_partial_and_unlocks_it(
    net: Network, pool: str, tmp_path: Path, peers: list[Peer]
) -> None:
    """A client that stops half way through a chunk leaves the server's stream thread
    blocked in its read: the idle time ends the copy, wakes that thread (its connection
    closed), and closes the partial file, which stays hidden (no path names it, no
    listing shows it) for a rerun, which then takes it over and lands the file."""
    chunk = 64 << 10
    data = os.urandom(100_000)  # two chunks
    g = grant(net, pool, "/limits/mid/x.bin", size=len(data))
    ctl, tid = control(g)
    peers.append(ctl)
    ctl.send_json(wire.Kind.MANIFEST, {"manifest": manifest([entry(data, chunk)], chunk)})
    kind, need = ctl.read()
    assert kind is wire.Kind.NEED and need["need"] == [[0, 1]]
    stream = data_stream(g, tid)
    peers.append(stream)
    stream.send(wire.Kind.DATA, wire.DATA.pack(0, 0) + data[:chunk])
    assert stream.read() == (wire.Kind.ACK, (0, 0, wire.Status.OK))
    rest = data[chunk:]
    head = wire.header(wire.Kind.DATA, wire.DATA.size + len(rest)) + wire.DATA.pack(0, 1)
    stream.sock.sendall(head + rest[:1000])  # and nothing more
    start = time.monotonic()
    assert f"no chunk moved for {IDLE:g} s" in ctl.refusal()
    assert closed_by_peer(stream.sock, BOUND - (time.monotonic() - start))
    assert not agent_holds(net, ctl.sock) and not agent_holds(net, stream.sock)

    here = root(net) / "limits" / "mid"
    assert sorted(p.name for p in here.iterdir()) == [".x.bin.cnetpart"]
    listed = net.cnet("ls", "--json", f"{pool}:/limits/mid", token=net.token)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["entries"] == []
    hidden = net.cnet(
        "cp", f"{pool}:/limits/mid/.x.bin.cnetpart", str(tmp_path / "p"), token=net.token
    )
    assert hidden.returncode == 1 and "cnetpart" in hidden.stderr, hidden.stderr

    src = tmp_path / "x.bin"
    src.write_bytes(data)
    cnet_ok(net, "cp", str(src), f"{pool}:/limits/mid/x.bin")
    assert sorted(p.name for p in here.iterdir()) == ["x.bin"]
    assert (here / "x.bin").read_bytes() == data
    cnet_ok(net, "rm", "-r", f"{pool}:/limits/mid")


@pytest.mark.parametrize(
    "need",
    [
        [[0]],  # fewer lists than files
        [[0], [0], [0]],  # more lists than files
        [[0], [1]],  # a chunk past the file's last
        [[0], [-1]],
        [[0], ["0"]],
        [[0], [0.0]],
        [[0], 0],
        "all",
        None,
        [[0, 0], [0]],  # one chunk asked for twice: a NEED could then grow without end
    ],
)
def test_a_need_that_does_not_match_the_manifest_is_refused(
    net: Network, pool: str, tmp_path: Path, peers: list[Peer], need: Any
) -> None:
    """A get's client names the chunks it wants by index: one the manifest does not have
    (or a list of the wrong shape) is refused with a reason before any stream may join,
    not met with an error half way through the send. The agent stays well: no error of
    its own is logged, and the path is free again (a copy still open would hold off its
    removal)."""
    tree = root(net) / "limits" / "need"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "a.txt").write_bytes(b"a" * 100)
    (tree / "b.txt").write_bytes(b"b" * 5000)
    g = grant(net, pool, "/limits/need", direction="get")
    ctl, tid = control(g, direction="get")
    peers.append(ctl)
    kind, frame = ctl.read()
    assert kind is wire.Kind.MANIFEST
    assert [f["path"] for f in frame["manifest"]["files"]] == ["a.txt", "b.txt"]
    assert [len(f["chunks"]) for f in frame["manifest"]["files"]] == [1, 1]
    ctl.send_json(wire.Kind.NEED, {} if need is None else {"need": need, "compress": False})
    assert ctl.read() == (wire.Kind.ERROR, {"error": "NEED does not match the manifest"})
    assert closed_by_peer(ctl.sock, 5)
    late = Peer(g)  # a data connection cannot join the refused transfer
    peers.append(late)
    late.hello("data", tid, direction="get")
    assert "is ready for data" in late.refusal()

    got = tmp_path / "got"
    cnet_ok(net, "cp", f"{pool}:/limits/need", str(got))
    assert (got / "b.txt").read_bytes() == b"b" * 5000
    cnet_ok(net, "rm", "-r", f"{pool}:/limits/need")
    assert "data server error" not in net.agents[POOL].output()


def offered(net: Network, pool: str, name: str, peers: list[Peer]) -> Peer:
    """A get of a one-file tree ``/limits/NAME``, its MANIFEST read and not answered."""
    tree = root(net) / "limits" / name
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "a.txt").write_bytes(b"a" * 100)
    ctl, _ = control(grant(net, pool, f"/limits/{name}", direction="get"), direction="get")
    peers.append(ctl)
    assert ctl.read()[0] is wire.Kind.MANIFEST
    return ctl


def test_a_need_longer_than_its_manifest_allows_is_refused_unread(
    net: Network, pool: str, peers: list[Peer]
) -> None:
    """Each chunk is named at most once, so a NEED's length has a bound the manifest
    sets: a header over it is refused before the server reads (or parses) the body,
    which could otherwise be 256 MiB of JSON for a file of one chunk."""
    ctl = offered(net, pool, "longneed", peers)
    ctl.sock.sendall(wire.header(wire.Kind.NEED, 1 << 20))
    assert ctl.refusal() == f"a NEED frame of {1 << 20} bytes is over this transfer's 4128"
    assert closed_by_peer(ctl.sock, 5)
    cnet_ok(net, "rm", "-r", f"{pool}:/limits/longneed")


def test_a_get_quiet_before_its_need_lets_go_of_its_path(
    net: Network, pool: str, peers: list[Peer]
) -> None:
    """A get's client may hash its partial files before it says what it needs, so it has
    the idle time plus what hashing the copy takes on a slow disk (50 MB/s), not an
    hour whatever the size: until then the path cannot be removed."""
    ctl = offered(net, pool, "quietget", peers)
    held = net.cnet("rm", "-r", f"{pool}:/limits/quietget", token=net.token)
    assert held.returncode == 1 and "is still moving" in held.stderr, held.stderr
    start = time.monotonic()
    assert ctl.refusal() == f"no NEED came within {IDLE:g} s: the copy is stopped"
    assert time.monotonic() - start < BOUND
    assert closed_by_peer(ctl.sock, 5)
    cnet_ok(net, "rm", "-r", f"{pool}:/limits/quietget")


def test_a_frame_longer_than_the_wire_allows_is_refused_unread(
    net: Network, pool: str, peers: list[Peer]
) -> None:
    """A frame's header states its length: one over its kind's limit is refused on the
    header alone, before the server reads (or makes room for) its body. On a control
    connection once the ticket checked out (a MANIFEST may be 256 MiB, not more), and on
    a data connection (a DATA frame of a chunk and its index, at most 64 MiB)."""
    over = wire.MAX_CONTROL + 1
    g = grant(net, pool, "/limits/big/x.bin", size=100)
    ctl, _ = control(g)
    peers.append(ctl)
    ctl.sock.sendall(wire.header(wire.Kind.MANIFEST, over))
    assert ctl.refusal() == f"a MANIFEST frame of {over} bytes is over the limit"

    data = os.urandom(100)
    ctl, tid = control(g)
    peers.append(ctl)
    ctl.send_json(wire.Kind.MANIFEST, {"manifest": manifest([entry(data, 4096)], 4096)})
    assert ctl.read()[0] is wire.Kind.NEED
    stream = data_stream(g, tid)
    peers.append(stream)
    over = wire.MAX_DATA + 1
    stream.sock.sendall(wire.header(wire.Kind.DATA, over) + wire.DATA.pack(0, 0))
    assert stream.refusal() == f"a DATA frame of {over} bytes is over the limit"
    assert closed_by_peer(stream.sock, 5)
    assert not (root(net) / "limits" / "big" / "x.bin").exists()


def test_a_peer_that_starts_tls_for_a_data_connection_is_held_to_the_handshakes_time(
    net: Network, pool: str
) -> None:
    """A data connection that asks for TLS leaves the event loop for a thread of its own
    before it shows a ticket; its HELLO must still come within the handshake's time
    overall, or a peer without a ticket holds a thread for as long as it trickles."""
    g = grant(net, pool, "/limits/tls/x")
    start = time.monotonic()
    plain = raw(g)
    body = json.dumps({"starttls": True, "role": "data"}).encode()
    plain.sendall(wire.header(wire.Kind.HELLO, len(body)) + body)
    assert plain.recv(wire.HEADER.size) == wire.header(wire.Kind.OK, 0)
    sock = client_context().wrap_socket(plain)
    try:
        sock.sendall(wire.header(wire.Kind.HELLO, 1000))
        while time.monotonic() - start < BOUND:
            if closed_by_peer(sock, 0.5):
                break
            try:
                sock.sendall(b" ")  # a byte of the HELLO's body every 0.5 s
            except OSError:
                break
        else:
            pytest.fail(f"a TLS data connection without a ticket was still open after {BOUND} s")
        assert not agent_holds(net, sock)
    finally:
        sock.close()
