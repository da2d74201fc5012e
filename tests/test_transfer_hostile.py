"""A data server facing a peer that does not play by the protocol: a real node and agent,
spoken to frame by frame the way a hostile client could. Each limit a ticket, a quota or
the wire format states must hold against what the sender actually does, not what it
declares: more bytes than its manifest states, a zstd frame that claims more than its
chunk, a HELLO too large to read, a copy that stalls while it holds a quota claim, a
relay to a host the node never named, a dataset version squatted before it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import psutil
import pytest
import zstandard

from computenet.agent.identity import Identity
from computenet.agent.link import NodeLink
from computenet.model import (
    DataEndpoint,
    Machine,
    PoolInventory,
    ProviderRegistration,
    TransferGrant,
)
from computenet.model.transfer import ManifestEntry
from computenet.transfer import wire
from computenet.transfer.faults import ENV as FAULTS
from computenet.transfer.manifest import CHUNK as DEFAULT_CHUNK
from computenet.transfer.manifest import tree_hash
from conftest import PYTHON, Network

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

IDLE = 3  # seconds the "quiet" agent lets a transfer or a handshake stall
CHUNK = 1 << 20


def root_of(net: Network, name: str) -> Path:
    return net.home / "agents" / name / "data"


@pytest.fixture(scope="module")
def quiet(shared: Network) -> str:
    """An agent that stops stalled transfers after a few seconds, not minutes."""
    if "quiet" not in shared.agents:
        shared.overrides["CNET_TRANSFER_IDLE"] = str(IDLE)
        try:
            shared.start_agent("quiet", "--no-calibrate")
        finally:
            del shared.overrides["CNET_TRANSFER_IDLE"]
    return shared.wait_pool("quiet")


class Peer:
    """One connection to a data server, spoken to frame by frame."""

    def __init__(self, grant: TransferGrant) -> None:
        self.grant = grant
        self.sock = socket.create_connection((grant.endpoint.host, grant.endpoint.port))
        self.sock.settimeout(60)

    def send(self, kind: wire.Kind, payload: bytes = b"") -> None:
        self.sock.sendall(wire.header(kind, len(payload)) + payload)

    def send_json(self, kind: wire.Kind, body: Any) -> None:
        self.send(kind, json.dumps(body).encode())

    def hello(self, role: str, tid: str, direction: str = "put", **more: Any) -> None:
        body = {
            "ticket": self.grant.ticket.model_dump(mode="json"),
            "direction": direction,
            "path": self.grant.path,
            "transfer": tid,
            "role": role,
            **more,
        }
        self.send_json(wire.Kind.HELLO, body)

    def read(self) -> tuple[wire.Kind, Any]:
        kind, length = wire.parse_header(self._exact(wire.HEADER.size))
        payload = self._exact(length)
        if kind is wire.Kind.ACK:
            return kind, wire.ACK.unpack(payload)
        if kind in (wire.Kind.DATA, wire.Kind.DATAZ):
            return kind, payload
        return kind, json.loads(payload) if payload else {}

    def refusal(self) -> str:
        """The ERROR this connection ends with (frames before it are passed over)."""
        while True:
            try:
                kind, body = self.read()
            except ConnectionError:
                return ""
            if kind is wire.Kind.ERROR:
                return str(body["error"])

    def _exact(self, n: int) -> bytes:
        return _recv(self.sock, n)

    def close(self) -> None:
        self.sock.close()


def grant(
    net: Network, pool: str, path: str, direction: str = "put", size: int = 0
) -> TransferGrant:
    with net.client() as c:
        return c.ticket({"pool": pool, "path": path, "direction": direction, "size": size})


def entry(
    data: bytes, chunk: int, path: str = "", chunks: list[str] | None = None
) -> ManifestEntry:
    hashes = [blake3.blake3(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]
    return ManifestEntry(path=path, size=len(data), chunks=hashes if chunks is None else chunks)


def manifest(
    files: list[ManifestEntry], chunk: int, dirs: list[str] | None = None
) -> dict[str, Any]:
    return {
        "chunk_size": chunk,
        "files": [f.model_dump() for f in files],
        "dirs": dirs or [],
        "tree_hash": tree_hash(files, dirs or []),
    }


def control(g: TransferGrant, frame: dict[str, Any]) -> tuple[Peer, str, Any]:
    """A put's control connection up to the data server's answer to the manifest."""
    tid = secrets.token_hex(8)
    peer = Peer(g)
    peer.hello("control", tid)
    assert peer.read()[0] is wire.Kind.OK
    peer.send_json(wire.Kind.MANIFEST, frame)
    return peer, tid, peer.read()


def refused_manifest(net: Network, pool: str, path: str, bad: ManifestEntry) -> str:
    """Why a put whose manifest names ``bad`` is refused, as the data server says it."""
    g = grant(net, pool, path, size=bad.size)
    peer, _, (kind, body) = control(g, {"manifest": manifest([bad], CHUNK)})
    peer.close()
    assert kind is wire.Kind.ERROR, (kind, body)
    return str(body["error"])


def moving(
    net: Network, pool: str, path: str, data: bytes, peers: list[Peer]
) -> tuple[TransferGrant, Peer, str]:
    """A put of one file, admitted: the data server has answered its manifest with NEED."""
    g = grant(net, pool, path, size=len(data))
    peer, tid, (kind, _) = control(g, {"manifest": manifest([entry(data, CHUNK)], CHUNK)})
    peers.append(peer)
    assert kind is wire.Kind.NEED
    return g, peer, tid


def stream(g: TransferGrant, tid: str, peers: list[Peer]) -> Peer:
    """A data connection joined to transfer ``tid``."""
    p = Peer(g)
    peers.append(p)
    p.hello("data", tid)
    assert p.read()[0] is wire.Kind.OK
    return p


def test_a_sender_cannot_write_more_than_its_manifest_states(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    chunk = 1 << 20
    data = os.urandom(chunk)
    h = blake3.blake3(data).hexdigest()
    # A ticket for 0 bytes, and a manifest that states 0 bytes in three full chunks.
    g = grant(shared, quiet, "/hostile/lie.bin")
    lie = ManifestEntry(path="", size=0, chunks=[h, h, h])
    peer, _, (kind, body) = control(g, {"manifest": manifest([lie], chunk)})
    peers.append(peer)
    assert kind is wire.Kind.ERROR
    assert "files.0.chunks: 3 chunks for 0 bytes" in body["error"]

    # A manifest that adds up, and a chunk longer than it says: the stream is refused.
    g = grant(shared, quiet, "/hostile/long.bin", size=10)
    peer, tid, (kind, need) = control(g, {"manifest": manifest([entry(data[:10], chunk)], chunk)})
    peers.append(peer)
    assert kind is wire.Kind.NEED and need["need"] == [[0]]
    stream = Peer(g)
    peers.append(stream)
    stream.hello("data", tid)
    assert stream.read()[0] is wire.Kind.OK
    # The header says how long the chunk is: it is refused before its bytes are read.
    head = wire.header(wire.Kind.DATA, wire.DATA.size + len(data)) + wire.DATA.pack(0, 0)
    stream.sock.sendall(head)
    assert "chunk 0 of file 0 is 1048576 bytes; its manifest makes it 10" in stream.refusal()
    peer.send(wire.Kind.COMMIT)
    assert "chunks are still missing" in peer.refusal()
    assert not (root_of(shared, "quiet") / "hostile" / "long.bin").exists()
    assert not (root_of(shared, "quiet") / "hostile" / "lie.bin").exists()

    # Two entries that land at one path.
    one = entry(b"x", chunk, "a/x")
    twice = one.model_copy(update={"path": "a//x"})
    g = grant(shared, quiet, "/hostile/twice", size=2)
    peer, _, (kind, body) = control(g, {"manifest": manifest([one, twice], chunk)})
    peers.append(peer)
    assert kind is wire.Kind.ERROR and "two files of the manifest land at one path" in body["error"]


def test_a_zstd_frame_that_claims_more_than_its_chunk_is_refused_unread(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    data = os.urandom(64 << 10)  # larger than the bomb: packing it shrank it, it says
    g, _, tid = moving(shared, quiet, "/hostile/bomb.bin", data, peers)
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 30))  # 1 GiB of zeros, ~32 KiB
    agent = psutil.Process(shared.agents["quiet"].popen.pid)  # type: ignore[union-attr]
    before = agent.memory_info().rss
    data_conn = stream(g, tid, peers)
    data_conn.send(wire.Kind.DATAZ, wire.DATAZ.pack(0, 0, len(data)) + bomb)
    assert "states 1073741824 bytes in its frame, not 65536" in data_conn.refusal()
    assert agent.memory_info().rss - before < 256 << 20  # the 1 GiB was never made
    g, _, tid = moving(shared, quiet, "/hostile/unpacked.bin", data, peers)
    padded = stream(g, tid, peers)  # "packed" into more than it unpacks to: read into a
    padded.send(wire.Kind.DATAZ, wire.DATAZ.pack(0, 0, len(data)) + bytes(len(data)))
    assert "a packed chunk of 65536 bytes unpacks to only 65536" in padded.refusal()


def test_a_hello_that_is_too_large_or_not_an_object_is_refused_before_any_ticket(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    g = grant(shared, quiet, "/hostile/x")
    big = Peer(g)
    peers.append(big)
    big.sock.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.HELLO, 64 << 20))
    assert "a HELLO frame of 67108864 bytes is over the limit" in big.refusal()
    odd = Peer(g)
    peers.append(odd)
    odd.send_json(wire.Kind.HELLO, [0, 1, 2])
    assert "a HELLO is a JSON object" in odd.refusal()
    way = Peer(g)
    peers.append(way)
    way.hello("control", "t1", direction="sideways")
    assert "names a direction" in way.refusal()
    wordy = Peer(g)  # a reason that would quote 50 KB back is cut short
    peers.append(wordy)
    wordy.hello("control", "t2", path="/hostile/" + "y/" * 25_000)
    why = wordy.refusal()
    assert why.startswith(f"ticket {g.ticket.claims.id} is for /hostile/x, not /hostile/y/y/")
    assert len(why) == 4096 and why.endswith("…")
    silent = Peer(g)  # says nothing: closed after the handshake's time
    peers.append(silent)
    silent.sock.settimeout(IDLE * 10)
    assert silent.sock.recv(1) == b""


def test_a_put_that_stalls_is_stopped_and_lets_go_of_its_path(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    data = os.urandom(100)
    g, peer, tid = moving(shared, quiet, "/hostile/stall/x", data, peers)
    data_conn = stream(g, tid, peers)
    data_conn.send(wire.Kind.DATA, wire.DATA.pack(0, 0) + data)
    assert data_conn.read() == (wire.Kind.ACK, (0, 0, wire.Status.OK))
    # No COMMIT comes: the copy is stopped, its idle stream closed with it, and the
    # path is free again (a copy still moving would hold off its removal).
    assert f"no chunk moved for {IDLE:g} s" in peer.refusal()
    data_conn.sock.settimeout(IDLE * 10)
    assert data_conn.sock.recv(1) == b""
    removed = shared.cnet("rm", "-r", f"{quiet}:/hostile/stall", token=shared.token)
    assert removed.returncode == 0, removed.stderr

    # Silent before its manifest: the same.
    g = grant(shared, quiet, "/hostile/stall/y", size=1)
    mute = Peer(g)
    peers.append(mute)
    mute.hello("control", secrets.token_hex(8))
    assert mute.read()[0] is wire.Kind.OK
    assert f"no MANIFEST came within {IDLE:g} s" in mute.refusal()


def test_a_transfer_takes_no_more_data_connections_than_a_client_opens(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    from computenet.transfer.client import MAX_STREAMS

    g, _, tid = moving(shared, quiet, "/hostile/many", os.urandom(100), peers)
    for _ in range(MAX_STREAMS):
        stream(g, tid, peers)
    extra = Peer(g)
    peers.append(extra)
    extra.hello("data", tid)
    assert f"has {MAX_STREAMS} data connections, the most it may" in extra.refusal()


def test_one_ticket_moves_a_few_copies_at_once_not_any_number(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    """Each copy holds threads and buffers: a ticket is for one copy and its reruns."""
    from computenet.transfer.server import PER_TICKET

    data = os.urandom(100)
    g = grant(shared, quiet, "/hostile/tk", size=len(data))
    frame = {"manifest": manifest([entry(data, CHUNK)], CHUNK)}
    for i in range(PER_TICKET + 1):
        peer = Peer(g)
        peers.append(peer)
        peer.hello("control", secrets.token_hex(8), path=f"/hostile/tk/{i}")
        if i == PER_TICKET:
            assert f"has {PER_TICKET} copies moving, the most one may" in peer.refusal()
            break
        assert peer.read()[0] is wire.Kind.OK
        peer.send_json(wire.Kind.MANIFEST, frame)
        assert peer.read()[0] is wire.Kind.NEED


def test_a_sender_takes_only_acks_and_reads_no_other_frame_whole(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    """A frame of another kind on a data stream of a get drops the stream on its header:
    read whole first, 256 MiB of it on every stream would take the server's memory."""
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    (root_of(shared, "quiet") / "hostile" / "read.bin").write_bytes(os.urandom(3 * CHUNK))
    g = grant(shared, quiet, "/hostile/read.bin", direction="get")
    ctl, tid = Peer(g), secrets.token_hex(8)
    peers.append(ctl)
    ctl.hello("control", tid, direction="get")
    assert ctl.read()[0] is wire.Kind.OK
    kind, offered = ctl.read()
    assert kind is wire.Kind.MANIFEST
    chunks = len(offered["manifest"]["files"][0]["chunks"])
    ctl.send_json(wire.Kind.NEED, {"need": [list(range(chunks))], "compress": False})
    assert ctl.read()[0] is wire.Kind.OK
    data = Peer(g)
    peers.append(data)
    data.hello("data", tid, direction="get")
    assert data.read()[0] is wire.Kind.OK
    data.sock.sendall(wire.header(wire.Kind.MANIFEST, (256 << 20) - 1))
    data.sock.settimeout(10)  # not waited for: the stream is dropped on the header alone
    assert data.refusal() == ""


def test_a_relay_frame_is_checked_whole_before_it_is_acted_on(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    (root_of(shared, "quiet") / "hostile" / "relayed.bin").write_bytes(b"relayed")
    g = grant(shared, quiet, "/hostile/relayed.bin", direction="get")
    put = grant(shared, quiet, "/hostile/relayed-to.bin", size=7).model_dump(mode="json")
    for body, why in (
        ([1, 2], "malformed request: "),
        ({"grant": put, "streams": "many"}, "malformed request: streams:"),
        ({"grant": put, "sync": "bogus"}, "malformed request: sync:"),
        ({"grant": put, "streams": 1000}, "malformed request: streams:"),
    ):
        peer = Peer(g)
        peers.append(peer)
        peer.hello("relay", secrets.token_hex(8), direction="get")
        answer = peer.read()
        assert answer[0] is wire.Kind.OK, answer
        peer.send_json(wire.Kind.RELAY, body)
        assert why in peer.refusal(), body
    assert "data server error" not in shared.agents["quiet"].output()
    assert not (root_of(shared, "quiet") / "hostile" / "relayed-to.bin").exists()


def test_a_put_stopped_before_its_commit_counts_against_the_quota(
    shared: Network, tmp_path: Path, peers: list[Peer]
) -> None:
    """Its partial file stays for a rerun to resume, and takes its space: a second put
    cannot claim that space again, and the rerun commits without claiming it twice."""
    if "tight" not in shared.agents:
        shared.start_agent("tight", "--no-calibrate", "--data-quota", "1M")
    tight = shared.wait_pool("tight")
    data = os.urandom(700 << 10)
    frame = {"manifest": manifest([entry(data, CHUNK)], CHUNK)}

    def partly(tid: str) -> tuple[Peer, TransferGrant]:
        g = grant(shared, tight, "/q/f0", size=len(data))
        peer = Peer(g)
        peers.append(peer)
        peer.hello("control", tid)
        assert peer.read()[0] is wire.Kind.OK
        peer.send_json(wire.Kind.MANIFEST, frame)
        return peer, g

    first, g = partly(tid := secrets.token_hex(8))
    assert first.read()[0] is wire.Kind.NEED
    conn = stream(g, tid, peers)
    conn.send(wire.Kind.DATA, wire.DATA.pack(0, 0) + data)
    assert conn.read() == (wire.Kind.ACK, (0, 0, wire.Status.OK))
    first.close()  # no COMMIT: the copy stops, its partial file kept
    conn.close()
    other = tmp_path / "f1.bin"
    other.write_bytes(os.urandom(700 << 10))
    deadline = time.monotonic() + 30
    while True:  # the stopped copy lets go of its claim as its session ends
        second = shared.cnet("cp", str(other), f"{tight}:/q/f1", token=shared.token)
        if second.returncode or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert second.returncode == 1, second.stderr
    assert "the pool's data quota is 1.0 MiB and it holds 700.0 KiB" in second.stderr
    rerun, _ = partly(secrets.token_hex(8))
    kind, need = rerun.read()
    assert kind is wire.Kind.NEED and need["need"] == [[]], need
    rerun.send(wire.Kind.COMMIT)
    assert rerun.read()[0] is wire.Kind.DONE
    assert (root_of(shared, "tight") / "q" / "f0").read_bytes() == data
    assert not (root_of(shared, "tight") / "q" / "f1").exists()


def test_set_id_bits_do_not_travel(shared: Network, quiet: str, tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o6755)
    put = shared.cnet("cp", str(tool), f"{quiet}:/hostile/tool", token=shared.token)
    assert put.returncode == 0, put.stderr
    there = root_of(shared, "quiet") / "hostile" / "tool"
    assert stat.S_IMODE(there.stat().st_mode) == 0o755
    there.chmod(0o4755)  # as a data root's file could be, put there by other means
    back = tmp_path / "back"
    got = shared.cnet("cp", f"{quiet}:/hostile/tool", str(back), token=shared.token)
    assert got.returncode == 0, got.stderr
    assert stat.S_IMODE(back.stat().st_mode) == 0o755


def test_a_relay_goes_only_to_the_data_server_the_node_named(
    shared: Network, quiet: str, tmp_path: Path, peers: list[Peer]
) -> None:
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    (root_of(shared, "quiet") / "hostile" / "src.bin").write_bytes(b"relayed")
    alpha = shared.wait_pool("alpha")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    try:
        dest = grant(shared, alpha, "/hostile/relayed.bin", size=7)
        elsewhere = dest.endpoint.model_copy(update={"port": listener.getsockname()[1]})
        for bad, says in [
            (dest.model_copy(update={"endpoint": elsewhere}), "is for the data server at"),
            (
                dest.model_copy(update={"path": "/hostile/other.bin"}),
                "is for /hostile/relayed.bin, not /hostile/other.bin",
            ),
        ]:
            src = grant(shared, quiet, "/hostile/src.bin", direction="get")
            peer = Peer(src)
            peers.append(peer)
            peer.hello("relay", secrets.token_hex(8), direction="get")
            assert peer.read()[0] is wire.Kind.OK
            peer.send_json(wire.Kind.RELAY, {"grant": bad.model_dump(mode="json")})
            assert says in peer.refusal()
        with pytest.raises(TimeoutError):
            listener.accept()  # the agent never called the port it was given
    finally:
        listener.close()
    assert not (root_of(shared, "alpha") / "hostile" / "other.bin").exists()
    relayed = shared.cnet(
        "cp", f"{quiet}:/hostile/src.bin", f"{alpha}:/hostile/relayed.bin", token=shared.token
    )
    assert relayed.returncode == 0, relayed.stderr
    assert (root_of(shared, "alpha") / "hostile" / "relayed.bin").read_bytes() == b"relayed"


def test_a_dataset_version_holds_only_what_was_copied(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    with shared.client() as admin:
        mal = admin.create_token("squat-mal", "squat-mal").secret
        bob = admin.create_token("squat-bob", "squat-bob").secret
    evil = tmp_path / "evil.txt"
    evil.write_text("not bob's")
    planted = shared.cnet("cp", str(evil), f"{quiet}:/datasets/squat/1/evil.txt", token=mal)
    assert planted.returncode == 0, planted.stderr  # nobody owns the name yet
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("bob's")
    pub = shared.cnet("cp", "--pool", quiet, str(data), "cnet://dataset/squat@1", token=bob)
    assert pub.returncode == 1
    assert "holds 'evil.txt', which this copy does not" in pub.stderr, pub.stderr
    assert len(pub.stderr.strip().splitlines()) == 1
    unpublished = httpx.get(
        f"{shared.url}/v1/datasets/squat", headers={"authorization": f"Bearer {bob}"}
    )
    assert unpublished.status_code == 404, unpublished.text
    # From a pool path too: the copy goes pool to pool, and is held to the same.
    (root_of(shared, "quiet") / "datasets" / "squat" / "3").mkdir(parents=True)
    (root_of(shared, "quiet") / "datasets" / "squat" / "3" / "evil.txt").write_text("x")
    alpha = shared.wait_pool("alpha")
    staged = shared.cnet("cp", str(data), f"{alpha}:/home/squat-bob/d", token=bob)
    assert staged.returncode == 0, staged.stderr
    relayed = shared.cnet(
        "cp", "--pool", quiet, f"{alpha}:/home/squat-bob/d", "cnet://dataset/squat@3", token=bob
    )
    assert relayed.returncode == 1
    assert "holds 'evil.txt', which this copy does not" in relayed.stderr, relayed.stderr
    other = shared.cnet("cp", "--pool", quiet, str(data), "cnet://dataset/squat@2", token=bob)
    assert other.returncode == 0, other.stderr
    back = tmp_path / "back"
    read = shared.cnet("cp", "cnet://dataset/squat@2", str(back), token=mal)
    assert read.returncode == 0, read.stderr
    assert sorted(p.name for p in back.iterdir()) == ["a.txt"]
    # Unnumbered, the version goes where its source's own tag says: planted there, only
    # naming a version moves it, and the refusal says so.
    key = "\0".join((socket.gethostname(), quiet, str(data.resolve()))).encode()
    tag = "u-" + hashlib.sha256(key).hexdigest()[:12]
    squat = shared.cnet("cp", str(evil), f"{quiet}:/datasets/squat2/{tag}/evil.txt", token=mal)
    assert squat.returncode == 0, squat.stderr
    auto = shared.cnet("cp", "--pool", quiet, str(data), "cnet://dataset/squat2", token=bob)
    assert auto.returncode == 1 and len(auto.stderr.strip().splitlines()) == 1, auto.stderr
    assert auto.stderr.strip().endswith(": name one, cnet://dataset/squat2@VERSION"), auto.stderr


def test_two_puts_into_one_path_at_once_are_not_merged(
    shared: Network, quiet: str, tmp_path: Path, peers: list[Peer]
) -> None:
    _, first, _ = moving(shared, quiet, "/hostile/race/x", os.urandom(100), peers)
    f = tmp_path / "x"
    f.write_bytes(b"the second copy")
    for where in ("/hostile/race/x", "/hostile/race"):
        second = shared.cnet("cp", str(f), f"{quiet}:{where}", token=shared.token)
        assert second.returncode == 1
        assert "a copy into /hostile/race/x is still moving" in second.stderr, second.stderr
    first.close()  # gone: the path is free again
    deadline = time.monotonic() + 30
    while (again := shared.cnet("cp", str(f), f"{quiet}:/hostile/race/x")).returncode:
        assert "still moving" in again.stderr and time.monotonic() < deadline, again.stderr
        time.sleep(0.2)
    assert (root_of(shared, "quiet") / "hostile/race/x").read_bytes() == b"the second copy"


def test_a_local_partial_file_another_copy_holds_is_left_to_it(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    (root_of(shared, "quiet") / "hostile" / "held.bin").write_bytes(b"from the pool")
    dest = tmp_path / "held.bin"
    part = tmp_path / ".held.bin.cnetpart"
    with open(part, "wb") as other:  # another copy, still writing it
        other.write(b"from another copy")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX)
        proc = shared.cnet("cp", f"{quiet}:/hostile/held.bin", str(dest), token=shared.token)
        assert proc.returncode == 1
        assert f"another copy is writing {dest} now" in proc.stderr, proc.stderr
        assert not dest.exists() and part.read_bytes() == b"from another copy"
    done = shared.cnet("cp", f"{quiet}:/hostile/held.bin", str(dest), token=shared.token)
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == b"from the pool" and not part.exists()


def test_a_local_link_or_special_file_is_not_replaced(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    (root_of(shared, "quiet") / "hostile" / "small.txt").write_text("pool\n")
    target = tmp_path / "target.txt"
    target.write_text("mine\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for dest, says in [(link, "is a link"), (fifo, "is not a regular file")]:
        proc = shared.cnet("cp", f"{quiet}:/hostile/small.txt", str(dest), token=shared.token)
        assert proc.returncode == 1 and f"{dest} {says}" in proc.stderr, proc.stderr
    assert link.is_symlink() and target.read_text() == "mine\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    into = tmp_path / "into"  # a tree whose file lands where a link stands: not through it
    into.mkdir()
    (into / "small.txt").symlink_to(target)
    proc = shared.cnet("cp", f"{quiet}:/hostile", str(into), token=shared.token)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{into / 'small.txt'} is a link: name the path it leads to" in proc.stderr
    assert (into / "small.txt").is_symlink() and target.read_text() == "mine\n"


def test_a_name_with_a_backslash_is_refused_by_name(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    """A pool path reads a backslash as a separator, so ``a\\b`` would land as ``a/b``,
    and a job could publish ``..\\..\\x`` as a dataset nobody can copy out: such a name
    stops the copy, named, from the command line, and from a peer that sends it anyway."""
    tree = tmp_path / "bs"
    tree.mkdir()
    (tree / "fine.txt").write_text("ok")
    (tree / "..\\..\\x").write_text("no")
    got = shared.cnet("cp", str(tree), f"{quiet}:/hostile/bs", token=shared.token)
    assert got.returncode == 1, got.stderr
    assert got.stderr.strip() == (
        "error: ..\\..\\x: its name holds a backslash, which a pool path reads as a "
        "separator, so it cannot travel; rename it"
    ), got.stderr
    assert not (root_of(shared, "quiet") / "hostile" / "bs").exists()
    one = shared.cnet("cp", str(tree / "..\\..\\x"), f"{quiet}:/hostile/bs/", token=shared.token)
    assert one.returncode == 1 and "its name holds a backslash" in one.stderr, one.stderr
    assert not (root_of(shared, "quiet") / "hostile" / "bs").exists()
    why = refused_manifest(shared, quiet, "/hostile/bs", entry(b"no", CHUNK, "a\\b"))
    assert "files.0.path: 'a\\\\b' holds a backslash" in why
    assert not (root_of(shared, "quiet") / "hostile" / "bs").exists()


def test_a_time_past_what_a_file_holds_is_refused_by_name(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    """It failed at the commit with a traceback in the agent's log, again at each rerun.
    A file dated past 2262 (past 64 bits of nanoseconds) is a file's time all the same."""
    bad = entry(b"late", CHUNK).model_copy(update={"mtime_ns": 10**40})  # unchecked: sent raw
    why = refused_manifest(shared, quiet, "/hostile/late.bin", bad)
    assert "files.0.mtime_ns" in why, why
    assert not (root_of(shared, "quiet") / "hostile" / "late.bin").exists()
    late = tmp_path / "late.bin"
    late.write_bytes(b"from the future")
    os.utime(late, ns=(10**19, 10**19))
    ok = shared.cnet("cp", str(late), f"{quiet}:/hostile/late.bin", token=shared.token)
    assert ok.returncode == 0, ok.stderr
    assert (root_of(shared, "quiet") / "hostile" / "late.bin").stat().st_mtime_ns == 10**19


def test_a_name_longer_than_a_file_system_takes_is_refused_before_anything_is_made(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    tree = tmp_path / "long"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    long = "c" * 300
    put = shared.cnet("cp", str(tree), f"{quiet}:/hostile/mk/a/{long}", token=shared.token)
    assert put.returncode == 1 and len(put.stderr.strip().splitlines()) == 1, put.stderr
    assert f"the name {'c' * 24}… is 300 bytes; a name takes at most 240" in put.stderr
    assert not (root_of(shared, "quiet") / "hostile" / "mk").exists()
    why = refused_manifest(shared, quiet, "/hostile/mk", entry(b"x", CHUNK, f"d/{long}"))
    assert "files.0.path: the name" in why, why
    assert not (root_of(shared, "quiet") / "hostile" / "mk").exists()
    made = root_of(shared, "quiet") / "hostile" / ("m" * 250)  # made otherwise: a job's, say
    made.parent.mkdir(exist_ok=True)
    made.write_text("kept")
    listed = shared.cnet("ls", f"{quiet}:/hostile/{made.name}", token=shared.token)
    assert listed.returncode == 0 and "m" * 60 in listed.stdout, listed.stderr
    gone = shared.cnet("rm", f"{quiet}:/hostile/{made.name}", token=shared.token)
    assert gone.returncode == 0 and not made.exists(), gone.stderr


def test_a_local_link_named_as_the_source_is_followed(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    """As ``cp`` follows it: the file it leads to is copied, at that file's size."""
    target = tmp_path / "target.bin"
    target.write_bytes(os.urandom(3 * CHUNK + 7))
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    got = shared.cnet("cp", str(link), f"{quiet}:/hostile/via-link.bin", token=shared.token)
    assert got.returncode == 0, got.stderr
    landed = root_of(shared, "quiet") / "hostile" / "via-link.bin"
    assert not landed.is_symlink() and landed.read_bytes() == target.read_bytes()


def test_a_name_that_is_not_utf8_is_named_not_dumped(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "fine.txt").write_text("fine")
    odd = os.fsencode(tree) + b"/bad\xff.txt"
    with open(odd, "wb") as f:
        f.write(b"odd")
    put = shared.cnet("cp", str(tree), f"{quiet}:/hostile/odd", token=shared.token)
    assert put.returncode != 0
    assert "bad\\udcff.txt: its name is not UTF-8" in put.stderr, put.stderr
    assert len(put.stderr.strip().splitlines()) == 1
    one = shared.cnet("cp", os.fsdecode(odd), f"{quiet}:/hostile/odd/", token=shared.token)
    assert one.returncode == 1, one.stderr
    assert (
        one.stderr.strip()
        == "error: bad\\udcff.txt: its name is not UTF-8, so it cannot travel; rename it"
    )
    named = shared.cnet("cp", str(tree), f"{quiet}:/hostile/\udcff", token=shared.token)
    assert named.returncode == 1, named.stderr
    assert "a pool path travels as UTF-8, and this one is not" in named.stderr, named.stderr
    assert len(named.stderr.strip().splitlines()) == 1
    assert not (root_of(shared, "quiet") / "hostile" / "odd").exists()
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    os.rename(odd, os.fsencode(root_of(shared, "quiet")) + b"/hostile/bad\xff.txt")
    got = shared.cnet("cp", f"{quiet}:/hostile", str(tmp_path / "got"), token=shared.token)
    assert got.returncode == 1
    assert "bad\\udcff.txt: its name is not UTF-8" in got.stderr, got.stderr
    assert "validation error" not in got.stderr and len(got.stderr.strip().splitlines()) == 1


def test_a_name_with_a_newline_or_markup_shows_as_one_line(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    """A raw newline would show one entry as two, and ``[bold]`` would vanish as markup."""
    src = tmp_path / "new\nline [bold]x.txt"
    src.write_text("odd")
    dest = f"{quiet}:/hostile/names/"
    put = shared.cnet("cp", str(src), dest, token=shared.token)
    assert put.returncode == 0, put.stderr
    assert put.stdout.count("\n") == 1 and "new\\nline [bold]x.txt -> " in put.stdout, put.stdout
    listed = shared.cnet("ls", dest, token=shared.token)
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in listed.stdout.splitlines() if "x.txt" in r]
    assert len(rows) == 1 and rows[0].endswith("new\\nline [bold]x.txt"), listed.stdout
    assert (root_of(shared, "quiet") / "hostile" / "names" / src.name).read_text() == "odd"


def capped_pool(shared: Network) -> str:
    """An agent whose data root holds at most 1 MiB."""
    if "capped" not in shared.agents:
        shared.start_agent("capped", "--no-calibrate", "--data-quota", "1M")
    return shared.wait_pool("capped")


def test_a_put_that_cannot_fit_is_refused_before_its_source_is_hashed(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    """Hashing a terabyte takes many minutes: a refusal that came only after it would not
    come within the CLI's 60 s here. Over the quota, and over the disk's free space (a
    sparse file's holes take none: a tree of links to one written file does)."""
    capped = capped_pool(shared)
    big, huge = tmp_path / "big.bin", tmp_path / "huge.bin"
    for path, size in [(big, 1 << 40), (huge, 2 << 40)]:  # sparse: no block is written
        with open(path, "wb") as f:
            f.truncate(size)
    over = shared.cnet("cp", str(big), f"{capped}:/big.bin", token=shared.token)
    assert over.returncode == 1, over.stderr
    assert "the pool's data quota is 1.0 MiB" in over.stderr, over.stderr
    assert "this copy needs 1.0 TiB" in over.stderr
    assert not list(root_of(shared, "capped").glob("*big*"))
    limit = shared.cnet("cp", str(huge), f"{quiet}:/hostile/huge.bin", token=shared.token)
    assert limit.returncode == 1
    assert "2.0 TiB is over this node's limit of 1.0 TiB for one copy" in limit.stderr, limit.stderr
    free = shutil.disk_usage(root_of(shared, "quiet")).free
    if free >= (1 << 40) - (1 << 30):
        pytest.skip("this disk has 1 TiB free: a copy larger than its free space is too large")
    links = tmp_path / "links"
    links.mkdir()
    with open(links / "0", "wb") as f:
        f.write(bytes(256 << 20))  # written out: it takes its size on the disk
    for i in range(1, free // (256 << 20) + 2):
        os.link(links / "0", links / str(i))  # each a file of its own in a copy
    full = shared.cnet("cp", str(links), f"{quiet}:/hostile/links", token=shared.token)
    assert full.returncode == 1, full.stderr
    assert "not enough space in the pool's data root:" in full.stderr, full.stderr
    assert not (root_of(shared, "quiet") / "hostile" / "links").exists()


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A file system that holds at most 64 files and directories, as a disk whose
    inodes run out does."""
    where = tmp_path / "few-inodes"
    where.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=64", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({made.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_tree_with_more_files_than_the_disk_has_inodes_is_refused_before_it_moves(
    shared: Network, tmp_path: Path, few_inodes: Path
) -> None:
    """A tree of small files runs out of inodes with bytes to spare: caught midway, it
    would leave every other writer on that disk failing too."""
    shared.start_agent("inodes", "--no-calibrate", "--data-root", str(few_inodes))
    pool = shared.wait_pool("inodes")
    tree = tmp_path / "tree"
    for d in range(10):
        (tree / f"d{d}").mkdir(parents=True)
        for i in range(10):
            (tree / f"d{d}" / f"f{i}").write_bytes(b"x" * 10)
    try:
        over = shared.cnet("cp", str(tree), f"{pool}:/tree", token=shared.token)
        assert over.returncode == 1, over.stderr
        assert "not enough inodes in the pool's data root: the copy makes 111 files" in (
            over.stderr
        ), over.stderr
        assert not (few_inodes / "tree").exists()
        for d in range(3, 10):
            shutil.rmtree(tree / f"d{d}")
        fits = shared.cnet("cp", str(tree), f"{pool}:/tree", token=shared.token)
        assert fits.returncode == 0, fits.stderr
        assert (few_inodes / "tree" / "d2" / "f9").read_bytes() == b"x" * 10
        # A get checks the local disk the same way, before it asks for a byte.
        got = few_inodes / "got"
        back = shared.cnet("cp", f"{pool}:/tree", str(got), token=shared.token)
        assert back.returncode == 1, back.stderr
        assert f"not enough inodes in {got}: the copy makes 33 files and directories" in (
            back.stderr
        ), back.stderr
        assert not [p for p in got.rglob("*") if not p.name.endswith(".cnetpart")]
        again = shared.cnet("cp", f"{pool}:/tree/d2", str(tmp_path / "d2"), token=shared.token)
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "d2" / "f9").read_bytes() == b"x" * 10
    finally:
        shared.agents.pop("inodes").stop()


def test_a_jobs_output_is_held_to_the_pools_data_quota(shared: Network, tmp_path: Path) -> None:
    capped = capped_pool(shared)
    with shared.client() as c:
        job = c.submit(
            command=["sh", "-c", "head -c 2000000 /dev/zero > o"],
            pool=capped,
            outputs=[{"path": "o", "uri": f"{capped}:/results/o"}],
        )
        job = c.wait(job.id, timeout=90)
        assert job.state.value == "FAILED", job.reason
        assert "the pool's data quota is 1.0 MiB" in job.reason, job.reason
        small = c.submit(
            command=["sh", "-c", "head -c 1000 /dev/zero > o"],
            pool=capped,
            outputs=[{"path": "o", "uri": f"{capped}:/results/o"}],
        )
        assert c.wait(small.id, timeout=90).state.value == "COMPLETE"
    assert not (root_of(shared, "capped") / "results" / ".o.cnetpart").exists()
    assert (root_of(shared, "capped") / "results" / "o").stat().st_size == 1000


def test_a_dataset_fetched_for_a_jobs_input_is_held_to_the_pools_data_quota(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    capped = capped_pool(shared)
    src = tmp_path / "two-mb"
    src.mkdir()
    (src / "d.bin").write_bytes(os.urandom(2_000_000))
    put = shared.cnet("cp", "--pool", quiet, str(src), "cnet://dataset/too-big", token=shared.token)
    assert put.returncode == 0, put.stderr
    with shared.client() as c:
        job = c.submit(
            command=["ls", "in"],
            pool=capped,
            inputs=[{"uri": "cnet://dataset/too-big", "path": "in"}],
        )
        job = c.wait(job.id, timeout=90)
    assert job.state.value == "FAILED", job.reason
    assert "staging input cnet://dataset/too-big" in str(job.reason), job.reason
    assert "the pool's data quota is 1.0 MiB" in str(job.reason), job.reason
    assert not list(root_of(shared, "capped").glob("datasets/too-big/**/d.bin"))


def test_a_relay_stops_when_its_client_goes(shared: Network, quiet: str, tmp_path: Path) -> None:
    """The destination here answers the relay's HELLO and then says nothing more, as a
    slow or stuck data server would: the copy waits on it until its client goes."""
    (root_of(shared, "quiet") / "hostile").mkdir(exist_ok=True)
    (root_of(shared, "quiet") / "hostile" / "far.bin").write_bytes(os.urandom(4096))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    seen: dict[str, Any] = {}

    def stuck_server() -> None:
        conn, _ = listener.accept()
        conn.settimeout(60)
        with conn:
            for _ in range(2):  # HELLO, then MANIFEST, and never a NEED
                kind, length = wire.parse_header(_recv(conn, wire.HEADER.size))
                seen.setdefault("frames", []).append(kind)
                _recv(conn, length)
                if kind is wire.Kind.HELLO:
                    conn.sendall(wire.header(wire.Kind.OK, 0))
            seen["eof"] = conn.recv(1) == b""

    server = threading.Thread(target=stuck_server, daemon=True)
    server.start()
    far = asyncio.run(_bare_pool(shared, tmp_path, listener.getsockname()[1]))
    copy = subprocess.Popen(
        [*PYTHON, "cp", f"{quiet}:/hostile/far.bin", f"{far}:/far.bin"],
        env=dict(shared.env, CNET_TOKEN=shared.token),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(seen.get("frames", [])) < 2:
            assert time.monotonic() < deadline, "the relay never reached the far pool"
            time.sleep(0.1)
        copy.send_signal(signal.SIGINT)  # Ctrl-C
        copy.wait(timeout=30)
    finally:
        copy.kill()
    server.join(timeout=60)
    listener.close()
    assert seen["frames"] == [wire.Kind.HELLO, wire.Kind.MANIFEST]
    assert seen.get("eof") is True  # the source's agent let go of the copy


def test_a_manifest_that_does_not_hash_to_its_tree_hash_lands_nothing(
    shared: Network, tmp_path: Path
) -> None:
    """A data server that claimed a dataset version's tree hash over files of its own
    would have them verified chunk by chunk against its own manifest, landed, and
    recorded as that version: the client hashes the manifest itself."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    forged = manifest([entry(b"not what was published", CHUNK)], CHUNK)
    forged["tree_hash"] = tree_hash([entry(b"what was published", CHUNK)], [])

    def lying_server() -> None:
        conn, _ = listener.accept()
        conn.settimeout(60)
        with conn:
            _, length = wire.parse_header(_recv(conn, wire.HEADER.size))
            _recv(conn, length)
            conn.sendall(wire.header(wire.Kind.OK, 0))
            body = json.dumps({"manifest": forged}).encode()
            conn.sendall(wire.header(wire.Kind.MANIFEST, len(body)) + body)
            with contextlib.suppress(OSError):
                conn.recv(1 << 16)

    server = threading.Thread(target=lying_server, daemon=True)
    server.start()
    far = asyncio.run(_bare_pool(shared, tmp_path, listener.getsockname()[1], "liar"))
    try:
        got = shared.cnet("cp", f"{far}:/v1.bin", str(tmp_path / "got.bin"), token=shared.token)
    finally:
        server.join(timeout=60)
        listener.close()
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert "does not hash to the tree hash it gives" in got.stderr, got.stderr
    assert not (tmp_path / "got.bin").exists()


def test_a_frame_other_than_a_hello_is_refused_on_its_header(
    shared: Network, quiet: str, peers: list[Peer]
) -> None:
    """Before, it was refused only once its payload was read: over a TLS data connection
    a header alone made the data server hold 256 MiB for the handshake's 30 s."""
    g = grant(shared, quiet, "/hostile/x")
    for kind in (wire.Kind.MANIFEST, wire.Kind.NEED, wire.Kind.DONE):
        p = Peer(g)
        peers.append(p)
        p.sock.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, kind, 256 << 20))
        assert f"expected HELLO, got {kind.name}" in p.refusal()
    p = Peer(g)
    peers.append(p)
    p.send_json(wire.Kind.HELLO, {"starttls": True, "role": "data"})
    assert p.read()[0] is wire.Kind.OK
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    p.sock = tls.wrap_socket(p.sock)
    p.sock.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.MANIFEST, 256 << 20))
    assert "expected HELLO, got MANIFEST" in p.refusal()


def _recv(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = conn.recv(n - len(out))
        if not got:
            raise ConnectionResetError(f"closed after {len(out)} of {n} bytes")
        out += got
    return out


async def _bare_pool(net: Network, tmp: Path, port: int, name: str = "far") -> str:
    """A pool with no agent, whose data server is the test's own listener."""
    link = NodeLink(net.url, net.token, Identity.load(tmp / "identity", tmp / "provider.key"))
    try:
        pool = await link.register(
            ProviderRegistration(name=name, public_key=link.identity.provider_key.public_key),
            PoolInventory(
                provider=name,
                name=name,
                public_key=link.identity.pool_key.public_key,
                machines=[Machine(name="m0", cpus=1, memory_bytes=2**30)],
                data=DataEndpoint(host="127.0.0.1", port=port),
            ),
        )
        return pool.cpi
    finally:
        await link.close()


def test_two_local_copies_into_one_file_at_once_do_not_mix(
    shared: Network, quiet: str, tmp_path: Path
) -> None:
    src = tmp_path / "two.bin"
    src.write_bytes(os.urandom(6 * DEFAULT_CHUNK))
    put = shared.cnet("cp", str(src), f"{quiet}:/hostile/two.bin", token=shared.token)
    assert put.returncode == 0, put.stderr
    out = tmp_path / "out.bin"
    args = [*PYTHON, "cp", "--streams", "1", f"{quiet}:/hostile/two.bin", str(out)]
    env = dict(shared.env, CNET_TOKEN=shared.token)
    first = subprocess.Popen(
        args,
        env={**env, FAULTS: "stop:chunk=2"},  # held half way, its partial file open
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while psutil.Process(first.pid).status() != psutil.STATUS_STOPPED:
            assert first.poll() is None and time.monotonic() < deadline, "never held"
            time.sleep(0.05)
        second = shared.cnet("cp", f"{quiet}:/hostile/two.bin", str(out), token=shared.token)
        assert second.returncode == 1
        assert f"another copy into {out} is running" in second.stderr, second.stderr
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    finally:
        first.kill()
    assert out.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "two.bin"]
