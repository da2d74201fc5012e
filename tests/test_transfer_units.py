"""Transfer pieces without processes: path confinement, tickets, manifests, framing."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from computenet.ident.keys import KeyPair
from computenet.model import Direction, TicketClaims
from computenet.model.transfer import (
    DataEndpoint,
    Manifest,
    ManifestEntry,
    ManifestFrame,
    SyncLevel,
)
from computenet.transfer import compress, hashes, quota, records, wire
from computenet.transfer import ticket as tickets
from computenet.transfer.client import wants_tls
from computenet.transfer.faults import Faults
from computenet.transfer.hashes import HashCache
from computenet.transfer.manifest import (
    build,
    digest,
    hash_chunks,
    subtree,
    total_size,
    tree_hash,
)
from computenet.transfer.paths import (
    PathError,
    confine,
    fetch_area,
    normalise,
    part_of,
    swap_in,
    sweep_fetches,
    sweep_parts,
    within,
)
from computenet.transfer.quota import Quota, QuotaExceeded
from computenet.transfer.receiver import Receiver
from computenet.transfer.ticket import TicketError
from computenet.transfer.wire import TransferError, WireError

POOL = "cpi:local:acme/gpu"


@pytest.mark.parametrize(
    ("given", "normal"),
    [("/", ""), ("", ""), ("/a//b/./c/", "a/b/c"), ("a/b", "a/b"), ("/.cnetx/y", ".cnetx/y")],
)
def test_paths_normalise(given: str, normal: str) -> None:
    assert normalise(given) == normal


@pytest.mark.parametrize("bad", ["/..", "/a/../b", "../x", "/.cnet/keys", "/a/.b.cnetpart", "a\0b"])
def test_paths_that_no_transfer_may_name(bad: str) -> None:
    with pytest.raises(PathError):
        normalise(bad)


def test_within_is_by_component() -> None:
    assert within("", "x") and within("a", "a") and within("a", "a/b")
    assert not within("a", "ab") and not within("a/b", "a")


def test_confine_follows_links_inside_only_when_asked_and_never_out(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "real").mkdir(parents=True)
    out.mkdir()
    (root / "inside").symlink_to(root / "real")
    (root / "outside").symlink_to(out)
    (root / "abs").symlink_to("/etc")
    assert confine(root, "/inside/f") == (root / "real" / "f").resolve()
    for bad in ("/outside/f", "/abs/passwd", "/outside"):
        with pytest.raises(PathError, match="leads out of the data root through a link"):
            confine(root, bad)
    assert confine(root, "/real/new/f", links=False) == (root / "real/new/f").resolve()
    for linked in ("/inside", "/inside/f", "/inside/new/f"):
        with pytest.raises(PathError, match="'/inside' is a link: name the path it leads to"):
            confine(root, linked, links=False)


def test_a_link_swapped_in_after_the_check_is_not_read(tmp_path: Path) -> None:
    """A tenant may swap its own file for a link to another's between the data server's
    check of the path and the read: the read follows no link, so it fails, named."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    (root / "home" / "a").mkdir(parents=True)
    secret.write_text("another tenant's")
    x = root / "home" / "a" / "x"
    x.write_text("mine")
    checked = confine(root, "/home/a/x", links=False)
    swapped = root / "home" / "a" / "l"
    swapped.symlink_to(secret)
    os.replace(swapped, x)
    with pytest.raises(OSError) as e:
        build(checked)
    assert e.value.errno == errno.ELOOP


def claims(**over: object) -> TicketClaims:
    base: dict[str, object] = {
        "id": tickets.new_id(),
        "pool": POOL,
        "path": "in",
        "direction": Direction.put,
        "max_bytes": 100,
        "expires_at": time.time() + 60,
        "tenant": "t",
        "issuer": "local",
    }
    return TicketClaims.model_validate({**base, **over})


def test_a_ticket_allows_its_path_prefix_direction_pool_and_size() -> None:
    key = KeyPair.generate()
    t = tickets.issue(key, claims())
    ok = {"pool": POOL, "direction": Direction.put}
    assert tickets.check(t, key.public_key, path="/in/a/b", size=100, **ok) == "in/a/b"  # type: ignore[arg-type]
    refusals = [
        ({"path": "/inside"}, "is for /in"),
        ({"path": "/in", "size": 101}, "allows 100 bytes"),
        ({"path": "/in", "pool": "cpi:local:acme/cpu"}, "is for pool"),
        ({"path": "/in", "direction": Direction.get}, "allows put"),
        ({"path": "/in/../x"}, "'..'"),
        ({"path": "/in", "now": time.time() + 61}, "expired"),
    ]
    for change, why in refusals:
        args = {**ok, **change}
        with pytest.raises(TicketError, match=why):
            tickets.check(t, key.public_key, **args)  # type: ignore[arg-type]
    with pytest.raises(tickets.BadSignature):
        tickets.check(t, KeyPair.generate().public_key, path="/in", **ok)  # type: ignore[arg-type]


def test_the_tree_hash_covers_names_sizes_and_content(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(os.urandom(10_000))
    (tmp_path / "g").write_bytes(b"")
    (tmp_path / "e").mkdir()
    m = build(tmp_path, chunk=4096).manifest
    files = {f.path: f for f in m.files}
    assert sorted(files) == ["a/f", "g"] and sorted(m.dirs) == ["a", "e"]
    assert len(files["a/f"].chunks) == 3 and files["g"].chunks == []
    assert tree_hash(m.files, m.dirs) == m.tree_hash
    renamed = [files["a/f"].model_copy(update={"path": "a/h"}), files["g"]]
    assert tree_hash(renamed, m.dirs) != m.tree_hash


def test_a_manifest_holds_the_trees_own_files_and_nothing_it_links_to(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "secret").write_text("no")
    src = tmp_path / "src"
    (src / "b" / ".cnet").mkdir(parents=True)
    (src / "b" / ".cnet" / "kept").write_text("a user's .cnet below the root is data")
    (src / ".cnet").mkdir()
    (src / ".cnet" / "own").write_text("the server's own")
    (src / "a").write_text("a")
    (src / ".a.cnetpart").write_text("half")
    (src / "to-file").symlink_to(outside / "secret")
    (src / "to-dir").symlink_to(outside / "d")
    os.mkfifo(src / "pipe")
    m = build(src, chunk=4096).manifest
    assert [f.path for f in m.files] == ["a", "b/.cnet/kept"]
    assert m.dirs == ["b", "b/.cnet"]
    assert total_size(src) == 1 + len("a user's .cnet below the root is data")


def test_partial_files_are_swept_by_when_a_copy_last_touched_them(tmp_path: Path) -> None:
    old, finished = tmp_path / ".old.cnetpart", tmp_path / "d" / ".done.cnetpart"
    old.write_bytes(b"abandoned")
    time.sleep(0.05)
    before = time.time()
    time.sleep(0.05)
    finished.parent.mkdir()
    finished.write_bytes(b"whole, with its source's times")
    os.utime(finished, ns=(0, 10**9))  # a source file from 1970: the ctime is now
    (tmp_path / "plain").write_bytes(b"not partial")
    assert sweep_parts(tmp_path, before) == 1
    assert not old.exists() and finished.exists() and (tmp_path / "plain").exists()


def test_fetches_are_swept_when_nothing_in_them_changed_for_long(tmp_path: Path) -> None:
    stale, moving = fetch_area(tmp_path, "/datasets/a/1"), fetch_area(tmp_path, "datasets/b/1")
    assert fetch_area(tmp_path, "datasets/a/1") == stale != moving
    for f in (stale / "x" / "f", moving / "g"):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"partly fetched")
    time.sleep(0.05)
    before = time.time()
    time.sleep(0.05)
    (moving / "g").write_bytes(b"still arriving")
    assert sweep_fetches(tmp_path, before) == 1
    assert not stale.exists() and (moving / "g").exists()


def test_the_records_of_a_removed_path_and_below_it_go_with_it(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    m = build(tmp_path / "src", chunk=4096).manifest
    root = tmp_path / "root"
    paths = ["a", "a/b", "ab", "c/a", 'a/q"uo\\te ü']
    for p in paths:
        records.write(root, p, m)
    held = {
        records.recorded(f.read_bytes()[: records.HEAD]) for f in records.folder(root).iterdir()
    }
    assert held == set(paths)
    assert records.forget(root, "a") == 3
    left = {records.recorded(f.read_bytes()) for f in records.folder(root).iterdir()}
    assert left == {"ab", "c/a"}
    assert json.loads(records.location(root, "ab").read_bytes())["tree_hash"] == m.tree_hash


def test_kept_hashes_serve_only_while_the_file_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(3 * 4096 + 5))
    cache = HashCache()
    first = build(f, 4096, cache).manifest
    assert cache.hits == 0  # changed just now: a write in the same clock tick could hide
    monkeypatch.setattr(hashes, "RACY", 0)
    build(f, 4096, cache)
    again = build(f, 4096, cache).manifest
    assert cache.hits == 1 and again == first

    st = f.stat()  # new bytes, same size, mtime put back: the ctime still tells
    f.write_bytes(os.urandom(st.st_size))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = build(f, 4096, cache).manifest.files[0]
    assert changed.mtime_ns == st.st_mtime_ns and cache.hits == 1
    assert changed.chunks == hash_chunks(f, st.st_size, 4096) != first.files[0].chunks

    cache.forget([f])
    build(f, 4096, cache)
    assert cache.hits == 1


def test_hashes_kept_without_ctime_outlive_a_hard_link_but_not_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What staging verifies a pool's copy with: linking it into a job sets each file's
    ctime, which must not cost a read of the whole copy per job."""
    monkeypatch.setattr(hashes, "RACY", 0)
    f = tmp_path / "f"
    f.write_bytes(os.urandom(2 * 4096))
    strict, loose = HashCache(), HashCache(ctime=False)
    for cache in (strict, loose):
        build(f, 4096, cache)
    os.link(f, tmp_path / "job-input")
    for cache in (strict, loose):
        build(f, 4096, cache)
    assert (strict.hits, loose.hits) == (0, 1)
    with open(tmp_path / "job-input", "ab") as job:
        job.write(b"evil")
    again = build(f, 4096, loose).manifest.files[0]
    assert loose.hits == 1 and again.chunks == hash_chunks(f, 2 * 4096 + 4, 4096)


def test_the_quota_holds_with_puts_still_moving_across_a_new_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        q = Quota(tmp_path, 100)
        await q.claim(80)  # a put admitted, still moving...
        (tmp_path / ".f.cnetpart").write_bytes(bytes(10))  # ...with 10 bytes written
        monkeypatch.setattr(quota, "STALE", 0.0)  # each claim walks the root again
        with pytest.raises(QuotaExceeded, match="quota is 100 B and it holds 90 B"):
            await q.claim(80)
        q.settle(80, landed=False)  # the first put fails; its partial file stays
        await q.claim(80)
        with pytest.raises(QuotaExceeded):
            await q.claim(20)
        q.settle(80, landed=True)
        monkeypatch.setattr(quota, "STALE", 3600.0)  # no walk: the landed put still counts
        with pytest.raises(QuotaExceeded):
            await q.claim(20)

    asyncio.run(run())


def test_a_chunk_that_could_not_be_written_can_be_taken_again(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"payload")
    m = build(src, chunk=4096).manifest
    dest = tmp_path / "dest"
    r = Receiver(m, [dest / "d" / "f"], [])
    r.plan()
    dest.mkdir()
    (dest / "d").write_bytes(b"")  # a file where the directory must go
    with pytest.raises(OSError):
        r.accept(0, 0, b"payload")
    (dest / "d").unlink()
    assert r.accept(0, 0, b"payload") is wire.Status.OK
    r.commit()
    assert (dest / "d" / "f").read_bytes() == b"payload"


def test_a_chunk_sent_again_after_it_landed_is_acknowledged_not_refused(tmp_path: Path) -> None:
    """A stream that breaks loses the ACKs it had not read; its chunks go again on
    another stream, and those that landed must not count as failures."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"a" * 4096 + b"b" * 100)
    m = build(src, chunk=4096).manifest
    r = Receiver(m, [tmp_path / "dest" / "f"], [])
    r.plan()
    assert r.accept(0, 0, b"a" * 4096) is wire.Status.OK
    assert r.accept(0, 0, b"a" * 4096) is wire.Status.OK
    assert r.accept(0, 2, b"x") is wire.Status.UNKNOWN  # no such chunk
    assert r.accept(0, 1, b"b" * 100) is wire.Status.OK
    r.commit()
    assert (tmp_path / "dest" / "f").read_bytes() == b"a" * 4096 + b"b" * 100
    assert r.counters.chunks == 2 and r.counters.bytes == 4196


def test_frames_round_trip_and_strangers_are_refused() -> None:
    async def run() -> None:
        r = asyncio.StreamReader()
        r.feed_data(wire.header(wire.Kind.ACK, 9) + wire.ACK.pack(1, 2, 0))
        r.feed_data(b"GET / HTTP/1.1\r\n")
        kind, payload = await wire.read_frame(r)
        assert kind is wire.Kind.ACK and wire.ACK.unpack(payload) == (1, 2, 0)
        with pytest.raises(wire.WireError, match="bad magic"):
            await wire.read_frame(r)

    asyncio.run(run())


def test_an_error_carries_its_code_and_one_from_a_newer_peer_still_reads() -> None:
    missing = TransferError("/x: no such file or directory in the pool", wire.Code.MISSING)
    body = json.loads(json.dumps(wire.error_body(str(missing), missing)))
    with pytest.raises(wire.Refused, match="no such file") as known:
        wire.control(wire.Kind.ERROR, json.dumps(body).encode(), (wire.Kind.OK,))
    assert known.value.code is wire.Code.MISSING
    newer = {"error": "a reason this end has no code for", "code": "quarantined"}
    with pytest.raises(wire.Refused, match="no code for") as unknown:
        wire.control(wire.Kind.ERROR, json.dumps(newer).encode(), (wire.Kind.OK,))
    assert unknown.value.code is None
    assert wire.error_body("plain", ValueError("x")) == {"error": "plain"}


@pytest.mark.parametrize(
    ("files", "dirs", "why"),
    [
        (["a"], ["a"], "dirs: 'a' is named twice"),
        ([], ["d", "d"], "dirs: 'd' is named twice"),
        (["a", "a-b", "a/b"], [], "'a/b' lies under 'a', which is a file"),
        (["a"], ["a.x", "a/x/y"], "'a/x/y' lies under 'a', which is a file"),
        (["a\0b"], [], "files.0.path: a name may not hold NUL"),
        (["", "b"], [], "a file with no name is the whole transfer"),
        (["x/" + "n" * 241], [], "is 241 bytes; a name takes at most 240"),
    ],
)
def test_a_manifest_lands_every_name_in_one_place(
    files: list[str], dirs: list[str], why: str
) -> None:
    """Names that collide would fail halfway through a commit, with part of the tree in
    place: refused with the manifest instead."""
    entries = [ManifestEntry(path=f, size=0) for f in files]
    with pytest.raises(ValidationError, match=re.escape(why)):
        Manifest(chunk_size=4096, files=entries, dirs=dirs, tree_hash="0" * 64)


def test_a_manifest_frame_is_parsed_whole_and_a_bad_one_names_its_field(
    tmp_path: Path,
) -> None:
    (tmp_path / "f").write_bytes(b"x" * 5000)
    m = build(tmp_path, chunk=4096).manifest

    async def run() -> None:
        class Sink:
            def __init__(self) -> None:
                self.data = b""

            def write(self, b: bytes) -> None:
                self.data += b

        sink = Sink()
        frame = ManifestFrame(manifest=m, sync=SyncLevel.checksum, verify=False)
        wire.send_model(sink, wire.Kind.MANIFEST, frame)  # type: ignore[arg-type]
        r = asyncio.StreamReader()
        r.feed_data(sink.data)
        got = await wire.expect_model(r, wire.Kind.MANIFEST, ManifestFrame)
        assert got == frame and got.manifest.files[0].chunks == m.files[0].chunks
        bad = frame.model_dump(mode="json")
        bad["manifest"]["files"][0]["size"] = -1
        r.feed_data(wire.header(wire.Kind.MANIFEST, len(raw := json.dumps(bad).encode())) + raw)
        with pytest.raises(ValidationError, match=r"manifest\.files\.0\.size"):
            await wire.expect_model(r, wire.Kind.MANIFEST, ManifestFrame)
        r.feed_data(wire.header(wire.Kind.ERROR, 15) + b'{"error":"no"}\n')
        with pytest.raises(wire.Refused, match="no"):
            await wire.expect_model(r, wire.Kind.MANIFEST, ManifestFrame)

    asyncio.run(run())


def test_the_fault_hook_reads_its_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNET_TRANSFER_FAULTS", "corrupt:chunk=3, kill:chunk=9, stop:chunk=4")
    f = Faults.from_env()
    assert (f.corrupt_at, f.kill_at, f.stop_at) == (3, 9, 4)
    assert f.tamper(3, b"ab") != b"ab" and f.tamper(2, b"ab") == b"ab"
    monkeypatch.setenv("CNET_TRANSFER_FAULTS", "explode")
    with pytest.raises(
        wire.TransferError, match="not one of corrupt:chunk=N, kill:chunk=N, stop:chunk=N"
    ):
        Faults.from_env()


def test_compression_is_chosen_by_a_sample_and_never_inflates_past_the_size(
    tmp_path: Path,
) -> None:
    text, noise = tmp_path / "text", tmp_path / "noise"
    text.write_bytes(b"the same line again\n" * 50_000)
    noise.write_bytes(os.urandom(1 << 20))
    assert compress.worth_it([text]) and not compress.worth_it([noise])
    packed = compress.pack(text.read_bytes())
    assert packed is not None and compress.unpack(packed, text.stat().st_size) == text.read_bytes()
    assert compress.pack(noise.read_bytes()) is None  # it would not shrink: sent as it is
    with pytest.raises(WireError):
        compress.unpack(packed, 1000)  # claims less than it holds: refused, not inflated
    with pytest.raises(WireError):
        compress.unpack(b"not zstd at all", 10)


@pytest.mark.parametrize(
    ("host", "advised", "tls"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("127.0.0.1", True, True),
        ("10.1.2.3", False, True),
        ("data.site-b.example", False, True),
    ],
)
def test_tls_is_on_off_loopback_unless_told(host: str, advised: bool, tls: bool) -> None:
    ep = DataEndpoint(host=host, port=9000, tls=advised)
    assert wants_tls(ep) is tls


def test_a_part_of_a_tree_has_the_manifest_a_copy_of_it_would_have(tmp_path: Path) -> None:
    root = tmp_path / "v"
    for rel in ("a.txt", "sub/b.bin", "sub/deep/c.txt", "sub/.cnet/x", "sub/deep/.cnet/y"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode() * 1000)
    (root / "sub" / "empty").mkdir()
    whole = build(root, 4096).manifest
    for inside in ("sub", "sub/deep", "sub/empty", "sub/b.bin", "a.txt"):
        part = subtree(whole, inside)
        assert part is not None and part == build(root / inside, 4096).manifest, inside
    assert subtree(whole, "nope") is None and subtree(whole, "su") is None


def test_a_tree_swapped_in_is_never_missing_nor_mixed(tmp_path: Path) -> None:
    """A job's output directory replaced while another process reads it: the reader sees
    the old tree or the new one, never no tree (the old one removed first) or a mix."""
    dest = tmp_path / "out"

    def tree(tag: str) -> Path:
        where = tmp_path / f"new-{tag}"
        where.mkdir()
        for i in range(300):
            (where / f"{tag}-{i}").write_text(tag)
        return where

    swap_in(tree("0"), dest)
    missing: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not dest.is_dir():
                missing.append("gone")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(1, 6):
            swap_in(tree(str(n)), dest)
    finally:
        done.set()
        watcher.join()
    assert not missing
    assert {p.read_text() for p in dest.iterdir()} == {"5"}
    assert len(list(dest.iterdir())) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old trees are gone
    (tmp_path / "file").write_text("a file")
    swap_in(tree("f"), tmp_path / "file")  # a tree onto a file, and back
    assert (tmp_path / "file").is_dir()
    (tmp_path / "g").write_text("g")
    swap_in(tmp_path / "g", tmp_path / "file")
    assert (tmp_path / "file").read_text() == "g"


def test_what_a_put_would_replace_counts_its_partial_files(tmp_path: Path) -> None:
    """The room question counts what lies at the path, partial files too, as a rerun's
    put would: an interrupted copy into a nearly full pool may resume."""
    from computenet.transfer.server import _present

    (tmp_path / "f").write_bytes(b"x" * 10)
    (tmp_path / ".f.cnetpart").write_bytes(b"x" * 5)
    assert _present(tmp_path / "f") == (15, 5)
    (tmp_path / ".g.cnetpart").write_bytes(b"x" * 7)
    assert _present(tmp_path / "g") == (7, 7)  # only the partial file so far
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a").write_bytes(b"x" * 3)
    (tmp_path / "d" / "sub" / ".b.cnetpart").write_bytes(b"x" * 4)
    assert _present(tmp_path / "d") == (7, 4)
    os.mkfifo(tmp_path / "p")
    assert _present(tmp_path / "p") == (0, 0) and _present(tmp_path / "nothing") == (0, 0)


def _manifest_of(data: bytes, chunk: int) -> Manifest:
    chunks = [digest(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    e = ManifestEntry(path="", size=len(data), chunks=chunks)
    return Manifest(chunk_size=chunk, files=[e], dirs=[], tree_hash=tree_hash([e], []))


def test_a_partial_file_another_copy_left_after_the_plan_lends_no_bytes(tmp_path: Path) -> None:
    """B plans while there is no partial file, so its zero chunk is to be a hole; copy A,
    of other data into the same place, then writes a chunk and goes away. B's file must
    hold B's bytes, zeros where its holes are, and none of A's."""
    chunk, final = 1 << 20, tmp_path / "f"
    theirs = os.urandom(2 * chunk)
    ours = bytes(chunk) + os.urandom(chunk) + bytes(chunk)
    b = Receiver(_manifest_of(ours, chunk), [final], [])
    plan = b.plan()
    assert plan.need == [[1]] and plan.holes == 2 * chunk
    a = Receiver(_manifest_of(theirs, chunk), [final], [])
    a.plan()
    a.accept(0, 0, theirs[:chunk])
    a.close()
    b.accept(0, 1, ours[chunk : 2 * chunk])
    b.commit()
    assert final.read_bytes() == ours
    empty = Receiver(_manifest_of(bytes(3 * chunk), chunk), [tmp_path / "z"], [])
    assert empty.plan().need == [[]]
    c = Receiver(_manifest_of(theirs, chunk), [tmp_path / "z"], [])
    c.plan()
    c.accept(0, 1, theirs[chunk:])  # left by a copy gone now
    c.close()
    empty.commit()  # nothing was written to it: it is all hole
    assert (tmp_path / "z").read_bytes() == bytes(3 * chunk)


def test_a_resumed_sparse_file_lands_whole(tmp_path: Path) -> None:
    chunk, final = 1 << 20, tmp_path / "f"
    ours = bytes(chunk) + os.urandom(chunk) + bytes(chunk)
    first = Receiver(_manifest_of(ours, chunk), [final], [])
    first.plan()
    first.accept(0, 1, ours[chunk : 2 * chunk])
    first.close()  # interrupted before its commit
    again = Receiver(_manifest_of(ours, chunk), [final], [])
    plan = again.plan()
    assert (plan.need, plan.present) == ([[]], 3)  # its holes read as the zeros they are
    again.commit()
    assert final.read_bytes() == ours


def test_a_replaced_file_lends_the_chunks_it_shares_and_only_those(tmp_path: Path) -> None:
    chunk, final = 1 << 20, tmp_path / "f"
    old = os.urandom(4 * chunk)
    new = old[:chunk] + os.urandom(chunk) + bytes(chunk) + old[3 * chunk : 3 * chunk + 5]
    final.write_bytes(old)
    r = Receiver(_manifest_of(new, chunk), [final], [], SyncLevel.checksum)
    plan = r.plan()
    assert plan.need == [[0, 1, 3]] and plan.holes == chunk  # asked for until seeded
    early = Receiver(_manifest_of(new, chunk), [final], [])
    early.plan()  # another copy, which found no partial file
    r.seed(plan)
    assert (plan.need, plan.present, plan.present_bytes) == ([[1]], 2, chunk + 5)
    assert final.read_bytes() == old  # untouched until the commit
    other = Receiver(_manifest_of(new, chunk), [final], [])
    with pytest.raises(TransferError, match="another copy is writing"):
        other.plan()  # the seeded partial file is held until this copy ends
    with pytest.raises(TransferError, match="another copy is writing"):
        early.accept(0, 0, new[:chunk])
    r.accept(0, 1, new[chunk : 2 * chunk])
    r.commit()
    r.close()
    assert final.read_bytes() == new

    final.write_bytes(old)
    gone = Receiver(_manifest_of(new, chunk), [final], [], SyncLevel.size)
    plan = gone.plan()
    gone.close()  # a deadline passed before the seeding began
    gone.seed(plan)
    assert plan.present == 0 and not part_of(final).exists()
    r = Receiver(_manifest_of(new, chunk), [final], [], SyncLevel.size)
    plan = r.plan()
    final.write_bytes(os.urandom(4 * chunk))  # rewritten after the plan
    r.seed(plan)
    assert (plan.need, plan.present) == ([[0, 1, 3]], 0)
    for c in (0, 1, 3):
        r.accept(0, c, new[c * chunk : (c + 1) * chunk])
    r.commit()
    assert final.read_bytes() == new


def test_a_link_at_the_destination_is_replaced_at_every_sync_level_but_exists(
    tmp_path: Path,
) -> None:
    chunk, final = 1 << 20, tmp_path / "f"
    data = os.urandom(chunk + 3)
    (tmp_path / "target").write_bytes(data)
    for level in (SyncLevel.size, SyncLevel.mtime, SyncLevel.checksum, SyncLevel.exists):
        final.unlink(missing_ok=True)
        final.symlink_to("target")
        r = Receiver(_manifest_of(data, chunk), [final], [], level)
        plan = r.plan()
        if level is SyncLevel.exists:
            assert plan.skip == [0]
            continue
        assert plan.skip == [] and plan.need == [[0, 1]]
        r.seed(plan)  # a link lends nothing: it is not read through
        assert plan.present == 0
        r.accept(0, 0, data[:chunk])
        r.accept(0, 1, data[chunk:])
        r.commit()
        assert not final.is_symlink() and final.read_bytes() == data
