"""Bulk transfer between this machine and a pool's data server, through ``cnet cp`` and the
SDK, against a real node and a real agent: files and trees both ways, bit for bit; a copy
killed half way that resumes with only the missing chunks; a chunk corrupted on the wire
that is caught and sent again; and tickets, paths and sizes that are refused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import BaseModel

from computenet.model import EntryKind, PoolListing, Removal, TransferGrant, TransferResult
from computenet.transfer import client as transfer
from computenet.transfer.faults import ENV as FAULTS
from computenet.transfer.manifest import CHUNK
from computenet.transfer.wire import TransferError
from conftest import PYTHON, Network, held_open

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
M = TypeVar("M", bound=BaseModel)


def root_of(net: Network, name: str = "alpha") -> Path:
    return net.home / "agents" / name / "data"


def cli(
    net: Network, *args: str, faults: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(net.env, CNET_TOKEN=net.token)
    if faults:
        env[FAULTS] = faults
    return subprocess.run(
        [*PYTHON, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def cp(
    net: Network, *args: str, faults: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return cli(net, "cp", "--json", *args, faults=faults, timeout=timeout)


def result(proc: subprocess.CompletedProcess[str]) -> TransferResult:
    assert proc.returncode == 0, proc.stderr
    return TransferResult.model_validate_json(proc.stdout)


def make_tree(base: Path, files: int, size: int) -> None:
    for i in range(files):
        p = base / f"d{i % 7}" / f"sub{i % 3}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    (base / "empty-dir").mkdir(parents=True)
    (base / "empty-file").write_bytes(b"")


def same_tree(a: Path, b: Path) -> None:
    def listing(root: Path) -> dict[str, bytes | None]:
        return {
            p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")
        }

    left, right = listing(a), listing(b)
    assert sorted(left) == sorted(right)
    assert left == right


@pytest.fixture(scope="module")
def pool(shared: Network) -> str:
    return shared.wait_pool("alpha")


@pytest.fixture(scope="module")
def beta(shared: Network) -> str:
    """A second agent: copies between two pools go from one data server to the other."""
    if "beta" not in shared.agents:
        shared.start_agent("beta", "--no-calibrate")
    return shared.wait_pool("beta")


def test_a_file_goes_to_the_pool_and_back_bit_for_bit(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * CHUNK + 12345))
    r = result(cp(shared, str(src), f"{pool}:/in/big.bin"))
    assert (root_of(shared) / "in" / "big.bin").read_bytes() == src.read_bytes()
    assert r.counters.chunks == 4 and r.counters.bytes == src.stat().st_size
    assert r.counters.files == 1 and r.counters.retries == 0

    back = result(cp(shared, f"{pool}:/in/big.bin", str(tmp_path / "back.bin")))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert back.tree_hash == r.tree_hash
    assert not list((root_of(shared) / "in").glob(".*"))  # no partial file left behind


def test_tls_streams_carry_a_file_and_a_tree_both_ways(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "tls" / "big.bin"
    make_tree(tmp_path / "tls", 40, 20_000)
    src.write_bytes(os.urandom(2 * CHUNK + 777))
    up = result(cp(shared, "--tls", "--streams", "3", str(tmp_path / "tls"), f"{pool}:/tls"))
    assert up.streams == 3 and up.counters.retries == 0
    same_tree(tmp_path / "tls", root_of(shared) / "tls")
    down = result(cp(shared, "--tls", f"{pool}:/tls", str(tmp_path / "tls-back")))
    assert down.tree_hash == up.tree_hash
    same_tree(tmp_path / "tls", tmp_path / "tls-back")
    bad = result(cp(shared, "--tls", str(src), f"{pool}:/tls/again.bin", faults="corrupt:chunk=2"))
    assert bad.counters.faults >= 1 and bad.counters.retries >= 1
    assert (root_of(shared) / "tls" / "again.bin").read_bytes() == src.read_bytes()


def test_chunks_that_shrink_go_compressed_and_land_bit_for_bit(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    text = tmp_path / "log.txt"
    text.write_text("".join(f"step {i} loss {i % 97 / 97:.4f}\n" for i in range(600_000)))
    size = text.stat().st_size
    assert size > CHUNK  # several chunks, the last one short
    up = result(cp(shared, str(text), f"{pool}:/z/log.txt"))
    assert up.counters.compressed_chunks == up.counters.chunks > 1
    assert up.counters.bytes == size and up.counters.wire_bytes < size // 3
    assert (root_of(shared) / "z" / "log.txt").read_bytes() == text.read_bytes()
    down = result(cp(shared, "--tls", f"{pool}:/z/log.txt", str(tmp_path / "back.txt")))
    assert down.counters.compressed_chunks == down.counters.chunks
    assert (tmp_path / "back.txt").read_bytes() == text.read_bytes()
    plain = result(cp(shared, "--no-compress", str(text), f"{pool}:/z/plain.txt"))
    assert plain.counters.compressed_chunks == 0 and plain.counters.wire_bytes == size
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(CHUNK + 5))
    auto = result(cp(shared, str(noise), f"{pool}:/z/noise.bin"))
    assert auto.counters.compressed_chunks == 0  # the sample did not shrink
    assert (root_of(shared) / "z" / "noise.bin").read_bytes() == noise.read_bytes()


def test_a_tree_goes_both_ways_through_the_sdk(shared: Network, pool: str, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    make_tree(src, 300, 10_000)
    with shared.client() as c:
        up = c.copy(str(src), f"{pool}:/trees/t1", streams=3)
        assert up.counters.files == 301 and up.streams == 3
        same_tree(src, root_of(shared) / "trees" / "t1")
        down = c.copy(f"{pool}:/trees/t1", str(tmp_path / "down"))
    same_tree(src, tmp_path / "down")
    assert down.tree_hash == up.tree_hash


def test_modes_and_times_travel_with_the_files(shared: Network, pool: str, tmp_path: Path) -> None:
    src = tmp_path / "kept"
    (src / "bin").mkdir(parents=True)
    files = {
        "bin/run.sh": (0o755, b"#!/bin/sh\necho hi\n"),
        "read-only.txt": (0o444, b"do not touch"),
        "private": (0o600, os.urandom(3000)),
        "two-chunks.bin": (0o640, os.urandom(CHUNK + 99)),
        "empty": (0o700, b""),
    }
    for i, (name, (mode, data)) in enumerate(files.items()):
        (src / name).write_bytes(data)
        os.chmod(src / name, mode)
        os.utime(src / name, ns=(0, 1_500_000_000_123_456_789 + i * 10**9))

    def kept(root: Path) -> dict[str, tuple[int, int]]:
        return {
            n: (os.stat(root / n).st_mode & 0o7777, os.stat(root / n).st_mtime_ns) for n in files
        }

    up = result(cp(shared, str(src), f"{pool}:/kept"))
    assert up.counters.files == len(files)
    assert kept(root_of(shared) / "kept") == kept(src)
    result(cp(shared, f"{pool}:/kept", str(tmp_path / "back")))
    assert kept(tmp_path / "back") == kept(src)
    same_tree(src, tmp_path / "back")


def test_a_file_into_a_directory_keeps_its_name(shared: Network, pool: str, tmp_path: Path) -> None:
    src = tmp_path / "named.txt"
    src.write_text("hello")
    result(cp(shared, str(src), f"{pool}:/dir/"))
    assert (root_of(shared) / "dir" / "named.txt").read_text() == "hello"
    (tmp_path / "out").mkdir()
    result(cp(shared, f"{pool}:/dir/named.txt", str(tmp_path / "out")))
    assert (tmp_path / "out" / "named.txt").read_text() == "hello"
    # A trailing / names a directory, made if need be, as it does in a pool (and for cp).
    result(cp(shared, f"{pool}:/dir/named.txt", f"{tmp_path / 'new' / 'deep'}/"))
    assert (tmp_path / "new" / "deep" / "named.txt").read_text() == "hello"
    # A pool path copied onto itself moves nothing: it is refused, and the file stays.
    same = cp(shared, f"{pool}:/dir/named.txt", f"{pool}:/dir/")
    assert same.returncode == 1 and "are the same path" in same.stderr, same.stderr
    assert (root_of(shared) / "dir" / "named.txt").read_text() == "hello"
    # A mistyped dataset URI is not a local file to make.
    typo = cp(shared, f"{pool}:/dir/named.txt", "cnet:/dataset/x")
    assert typo.returncode == 1 and "is neither a pool path" in typo.stderr, typo.stderr
    assert not Path("cnet:").exists()


def test_a_local_destination_that_cannot_be_written_is_named_in_one_line(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    """Named as the user named it, never by a lock or partial file's own name."""
    (root_of(shared) / "unwritable" / "t").mkdir(parents=True, exist_ok=True)
    (root_of(shared) / "unwritable" / "t" / "x.txt").write_text("x")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    tree = cli(shared, "cp", f"{pool}:/unwritable/t", str(afile))
    assert tree.returncode == 1, tree.stderr
    assert tree.stderr.strip() == f"error: {afile} is a file: a directory cannot land there"
    one = cli(shared, "cp", f"{pool}:/unwritable/t/x.txt", str(afile / "sub" / "x.txt"))
    assert one.returncode == 1, one.stderr
    assert one.stderr.strip() == f"error: {afile / 'sub'}: cannot make it: Not a directory"
    assert afile.read_text() == "mine"


def test_an_empty_directory_is_made_both_ways(shared: Network, pool: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert result(cp(shared, str(tmp_path / "empty"), f"{pool}:/made-empty")).total_bytes == 0
    assert (root_of(shared) / "made-empty").is_dir()
    assert not any((root_of(shared) / "made-empty").iterdir())
    result(cp(shared, f"{pool}:/made-empty", str(tmp_path / "back")))
    assert (tmp_path / "back").is_dir() and not any((tmp_path / "back").iterdir())


def test_links_and_special_files_left_out_are_counted_both_ways(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    tree = tmp_path / "odd"
    (tree / "sub").mkdir(parents=True)
    (tree / "real.txt").write_text("real")
    (tree / "sub" / "link").symlink_to(tree / "real.txt")
    os.mkfifo(tree / "pipe")
    (tree / "sub" / ".half.bin.cnetpart").write_text("a partial file no path may name")
    (tree / ".cnet").mkdir()  # as a data root's own files are named
    (tree / ".cnet" / "state").write_text("x")
    put = cli(shared, "cp", str(tree), f"{pool}:/odd")
    assert put.returncode == 0, put.stderr
    assert "4 entries in the source not copied (links, special files, partial" in put.stderr
    assert sorted(p.name for p in (root_of(shared) / "odd").rglob("*")) == ["real.txt", "sub"]
    assert result(cp(shared, str(tree), f"{pool}:/odd")).counters.left_out == 4
    (root_of(shared) / "odd" / "sub" / "to-real").symlink_to("../real.txt")
    back = result(cp(shared, f"{pool}:/odd", str(tmp_path / "back")))
    assert back.counters.left_out == 1 and back.counters.files == 1
    assert not (tmp_path / "back" / "sub" / "to-real").exists()
    # Named itself, a link is followed (as cp follows it); a pipe is refused by name.
    result(cp(shared, str(tree / "sub" / "link"), f"{pool}:/odd/followed.txt"))
    assert (root_of(shared) / "odd" / "followed.txt").read_text() == "real"
    pipe = cli(shared, "cp", str(tree / "pipe"), f"{pool}:/odd/pipe")
    assert pipe.returncode == 1
    assert (
        pipe.stderr.strip()
        == "error: pipe is neither a file nor a directory: a copy moves only those"
    )


def extents(path: Path) -> list[tuple[int, int]]:
    """Where ``path`` holds data, by the filesystem: what lies outside reads as zeros."""
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        size, at = os.fstat(fd).st_size, 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                break  # only holes from here to the end
            at = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, at))
    finally:
        os.close(fd)
    return out


def same_sparse(src: Path, dst: Path, most: int) -> None:
    """Bit for bit without reading gigabytes of zeros: where either holds data, the bytes
    agree; everywhere else both are holes. ``dst`` holds at most ``most`` bytes of data."""
    assert dst.stat().st_size == src.stat().st_size
    held = extents(dst)
    assert sum(b - a for a, b in held) <= most, held
    assert dst.stat().st_blocks * 512 <= most + (1 << 20)
    with src.open("rb") as a, dst.open("rb") as b:
        for start, end in sorted(set(held) | set(extents(src))):
            a.seek(start), b.seek(start)
            assert a.read(end - start) == b.read(end - start), (start, end)


def test_a_sparse_file_moves_only_its_data_and_lands_sparse(
    shared: Network, pool: str, beta: str, tmp_path: Path
) -> None:
    src = tmp_path / "disk.img"
    with src.open("wb") as f:  # 16 GiB and 123 bytes, of which 3 chunks hold data
        f.write(os.urandom(3 * CHUNK // 2))
        f.seek(2 * CHUNK)
        f.write(bytes(CHUNK))  # zeros written out are zeros all the same
        f.seek(10 << 30)
        f.write(os.urandom(CHUNK))
        f.truncate((16 << 30) + 123)
    chunks = ((16 << 30) + 123) // CHUNK + 1
    holes = (chunks - 4) * CHUNK  # data, data, data, ..., a short zero chunk at the end
    up = result(cp(shared, str(src), f"{pool}:/sparse/disk.img"))
    assert up.counters.bytes_holes == holes and up.counters.chunks == 4
    assert up.counters.bytes == 3 * CHUNK + 123
    same_sparse(src, root_of(shared) / "sparse" / "disk.img", 3 * CHUNK + 4096)
    across = result(cp(shared, f"{pool}:/sparse/disk.img", f"{beta}:/disk.img"))
    assert across.counters.bytes_holes == holes
    same_sparse(src, root_of(shared, "beta") / "disk.img", 3 * CHUNK + 4096)
    back = cli(shared, "cp", f"{beta}:/disk.img", str(tmp_path / "back.img"))
    assert back.returncode == 0, back.stderr
    assert "16.0 GiB of zeros left as holes" in back.stdout, back.stdout
    same_sparse(src, tmp_path / "back.img", 3 * CHUNK + 4096)


def test_a_sparse_file_larger_than_the_free_disk_is_let_in(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    """Its holes take no disk at the destination either: neither the question asked
    before hashing nor the put's own check counts them."""
    size = shutil.disk_usage(root_of(shared)).free + (64 << 30)
    if size >= 1 << 40:
        pytest.skip(f"the disk has {size >> 30} GiB free: more than one copy may move (1 TiB)")
    src = tmp_path / "huge.img"
    with src.open("wb") as f:
        f.write(os.urandom(CHUNK))
        f.truncate(size)
    dst = root_of(shared) / "sparse" / "huge.img"
    try:
        r = result(cp(shared, str(src), f"{pool}:/sparse/huge.img", timeout=300))
        assert r.counters.bytes == CHUNK + size % CHUNK
        same_sparse(src, dst, 2 * CHUNK)
    finally:
        dst.unlink(missing_ok=True)


def test_pool_to_pool_goes_directly_between_the_agents(
    shared: Network, pool: str, beta: str, tmp_path: Path
) -> None:
    src = tmp_path / "tree"
    make_tree(src, 50, 3 * CHUNK // 50)
    result(cp(shared, str(src), f"{pool}:/p2p"))
    r = result(cp(shared, f"{pool}:/p2p", f"{beta}:/from-alpha"))
    assert r.source == f"{pool}:/p2p" and r.destination == f"{beta}:/from-alpha"
    assert r.counters.files == 51
    same_tree(src, root_of(shared, "beta") / "from-alpha")
    one = result(cp(shared, f"{pool}:/p2p/d0/sub0/f0.bin", f"{beta}:/single/"))
    assert one.counters.files == 1
    assert (root_of(shared, "beta") / "single" / "f0.bin").read_bytes() == (
        src / "d0" / "sub0" / "f0.bin"
    ).read_bytes()


def test_a_killed_copy_resumes_with_only_the_missing_chunks(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "resume.bin"
    src.write_bytes(os.urandom(8 * CHUNK))
    dest = root_of(shared) / "resume" / "resume.bin"
    killed = cp(shared, "--streams", "1", str(src), f"{pool}:/resume/", faults="kill:chunk=3")
    assert killed.returncode == -9, killed.stderr
    assert not dest.exists()  # nobody sees a half-written file under its name
    assert (dest.parent / ".resume.bin.cnetpart").exists()

    r = result(cp(shared, str(src), f"{pool}:/resume/"))
    assert r.counters.chunks_present >= 3
    assert r.counters.chunks + r.counters.chunks_present == 8
    assert r.counters.bytes == (8 - r.counters.chunks_present) * CHUNK
    assert dest.read_bytes() == src.read_bytes()

    out = tmp_path / "got.bin"
    killed = cp(
        shared, "--streams", "1", f"{pool}:/resume/resume.bin", str(out), faults="kill:chunk=5"
    )
    assert killed.returncode == -9 and not out.exists()
    r = result(cp(shared, f"{pool}:/resume/resume.bin", str(out)))
    assert r.counters.chunks_present >= 5 and r.counters.chunks == 8 - r.counters.chunks_present
    assert out.read_bytes() == src.read_bytes()

    env = dict(shared.env, CNET_TOKEN=shared.token, **{FAULTS: "stop:chunk=2"})
    args = ["cp", "--streams", "1", str(src), f"{pool}:/resume/again.bin"]
    ctrl_c = subprocess.Popen([*PYTHON, *args], env=env, stderr=subprocess.PIPE, text=True)
    held_open(ctrl_c, "its second chunk")
    ctrl_c.send_signal(signal.SIGINT)  # as Ctrl-C in its terminal
    ctrl_c.send_signal(signal.SIGCONT)
    _, err = ctrl_c.communicate(timeout=60)
    assert ctrl_c.returncode == 130
    assert err == "error: interrupted: what arrived is kept; run the same command again to resume\n"
    again = result(cp(shared, str(src), f"{pool}:/resume/again.bin"))
    assert again.counters.chunks_present >= 2


def test_a_killed_tree_copy_resumes_without_the_files_it_finished(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "tree"
    make_tree(src, 30, 20_000)
    dest = root_of(shared) / "resumed-tree"
    killed = cp(shared, "--streams", "1", str(src), f"{pool}:/resumed-tree", faults="kill:chunk=12")
    assert killed.returncode == -9, killed.stderr
    assert not [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(".cnetpart")]

    r = result(cp(shared, str(src), f"{pool}:/resumed-tree"))
    assert r.counters.chunks_present >= 12
    assert r.counters.chunks + r.counters.chunks_present == 30
    assert r.counters.files == 31  # every file, the empty one too, is put in place
    same_tree(src, dest)


def test_a_chunk_corrupted_on_the_wire_is_caught_and_sent_again(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "c.bin"
    src.write_bytes(os.urandom(4 * CHUNK))
    r = result(cp(shared, str(src), f"{pool}:/corrupt/c.bin", faults="corrupt:chunk=3"))
    assert r.counters.faults >= 1 and r.counters.retries >= 1 and r.counters.chunks == 4
    assert (root_of(shared) / "corrupt" / "c.bin").read_bytes() == src.read_bytes()

    r = result(cp(shared, f"{pool}:/corrupt/c.bin", str(tmp_path / "c2"), faults="corrupt:chunk=2"))
    assert r.counters.faults >= 1 and r.counters.retries >= 1
    assert (tmp_path / "c2").read_bytes() == src.read_bytes()

    bad = cli(shared, "cp", str(src), f"{pool}:/corrupt/d.bin", faults="corrupt:chunk=x")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == (  # one line: no traceback, no blank line left by a progress bar
        "error: CNET_TRANSFER_FAULTS: 'corrupt:chunk=x' is not one of "
        "corrupt:chunk=N, kill:chunk=N, stop:chunk=N\n"
    )
    missing = cli(shared, "cp", str(tmp_path / "nope"), f"{pool}:/corrupt/e.bin")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")


def test_sync_levels_leave_what_matches(shared: Network, pool: str, tmp_path: Path) -> None:
    src = tmp_path / "s"
    make_tree(src, 20, 5000)
    first = result(cp(shared, "--sync", "mtime", str(src), f"{pool}:/sync"))
    assert first.counters.files == 21
    again = result(cp(shared, "--sync", "mtime", str(src), f"{pool}:/sync"))
    assert again.counters.files == 0 and again.counters.files_skipped == 21
    assert again.counters.bytes == 0

    changed = src / "d0" / "sub0" / "f0.bin"
    stat = changed.stat()
    changed.write_bytes(os.urandom(5000))  # same size, same mtime: only a checksum sees it
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert result(cp(shared, "--sync", "size", str(src), f"{pool}:/sync")).counters.files == 0
    r = result(cp(shared, "--sync", "checksum", str(src), f"{pool}:/sync"))
    assert r.counters.files == 1 and r.counters.files_skipped == 20
    same_tree(src, root_of(shared) / "sync")


def test_a_changed_file_sends_only_its_changed_chunks_every_way(
    shared: Network, pool: str, beta: str, tmp_path: Path
) -> None:
    """At sync levels that compare, a file that is there but differs is updated by chunk:
    what it shares with its new version is copied on the receiving side."""
    src = tmp_path / "model.bin"
    data = bytearray(os.urandom(5 * CHUNK))
    src.write_bytes(data)
    first = result(cp(shared, "--sync", "size", str(src), f"{pool}:/delta/model.bin"))
    assert first.counters.chunks == 5 and first.counters.chunks_present == 0

    data[2 * CHUNK + 7] ^= 0xFF  # one byte in chunk 2, and 3 MiB more: a sixth chunk
    data += os.urandom(3 << 20)
    src.write_bytes(data)
    up = result(cp(shared, "--sync", "size", str(src), f"{pool}:/delta/model.bin"))
    k = up.counters
    assert (k.chunks, k.chunks_present, k.files) == (2, 4, 1)
    assert k.bytes == CHUNK + (3 << 20) and k.bytes_skipped == 4 * CHUNK
    landed = root_of(shared) / "delta" / "model.bin"
    assert landed.read_bytes() == bytes(data)
    assert not list(landed.parent.glob(".*"))  # no partial file left

    across = result(cp(shared, f"{pool}:/delta/model.bin", f"{beta}:/delta/model.bin"))
    assert across.counters.chunks == 6
    data[0] ^= 0xFF
    src.write_bytes(data)
    result(cp(shared, str(src), f"{pool}:/delta/model.bin"))  # sync none: all six again
    again = result(
        cp(shared, "--sync", "checksum", f"{pool}:/delta/model.bin", f"{beta}:/delta/model.bin")
    )
    assert (again.counters.chunks, again.counters.chunks_present) == (1, 5)
    assert (root_of(shared, "beta") / "delta" / "model.bin").read_bytes() == bytes(data)

    local = tmp_path / "back.bin"
    local.write_bytes(bytes(data[: 3 * CHUNK]) + os.urandom(CHUNK))  # older and shorter
    down = result(cp(shared, "--sync", "mtime", f"{pool}:/delta/model.bin", str(local)))
    assert (down.counters.chunks, down.counters.chunks_present) == (3, 3)
    assert local.read_bytes() == bytes(data)

    os.utime(src, ns=(0, 10**18))  # a new time only: every chunk is there already
    touched = result(cp(shared, "--sync", "mtime", str(src), f"{pool}:/delta/model.bin"))
    assert (touched.counters.chunks, touched.counters.chunks_present) == (0, 6)
    assert touched.counters.files == 1 and landed.stat().st_mtime_ns == 10**18
    assert landed.read_bytes() == bytes(data)


def test_a_pool_file_changed_in_place_is_sent_as_it_is_now(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    """The data server keeps the hashes of files it has sent; a file rewritten in place,
    with its size and mtime put back, must not be sent under its old hashes."""
    src = tmp_path / "kept.bin"
    src.write_bytes(os.urandom(2 * CHUNK + 7))
    result(cp(shared, str(src), f"{pool}:/kept/"))
    time.sleep(1.2)  # older than a clock tick: its hashes are kept from the next send
    for _ in range(2):
        result(cp(shared, f"{pool}:/kept/kept.bin", str(tmp_path / "out.bin")))
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()

    there = root_of(shared) / "kept" / "kept.bin"
    st = there.stat()
    new = os.urandom(st.st_size)
    with there.open("r+b") as fh:
        fh.write(new)
    os.utime(there, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = result(cp(shared, f"{pool}:/kept/kept.bin", str(tmp_path / "new.bin")))
    assert r.counters.retries == 0 and r.counters.chunks == 3
    assert (tmp_path / "new.bin").read_bytes() == new


def test_a_deadline_stops_the_copy_with_a_clear_reason(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "slow.bin"
    src.write_bytes(os.urandom(2 * CHUNK))
    proc = cp(shared, "--deadline", "1ms", str(src), f"{pool}:/late/slow.bin")
    assert proc.returncode == 1
    assert "deadline" in proc.stderr and "Traceback" not in proc.stderr
    # A deadline past a ticket's day is a deadline, not a ticket's lifetime to refuse.
    result(cp(shared, "--deadline", "2d", str(src), f"{pool}:/late/slow.bin"))
    assert (root_of(shared) / "late" / "slow.bin").read_bytes() == src.read_bytes()


def put(grant: TransferGrant, local: Path) -> TransferResult:
    return asyncio.run(transfer.put(grant, local))


def test_a_ticket_for_another_path_is_refused(shared: Network, pool: str, tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"x" * 100)
    with shared.client() as c:
        g = c.ticket({"pool": pool, "path": "/allowed/x", "direction": "put", "size": 100})
    with pytest.raises(TransferError, match=r"is for /allowed/x, not /elsewhere/x"):
        put(g.model_copy(update={"path": "/elsewhere/x"}), f)
    with pytest.raises(TransferError, match=r"'\.\.' is not allowed"):
        put(g.model_copy(update={"path": "/allowed/x/../../y"}), f)
    assert not (root_of(shared) / "elsewhere").exists()
    assert put(g, f).counters.files == 1


def test_a_ticket_that_expired_or_was_altered_is_refused(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"x" * 100)
    with shared.client() as c:
        short = c.ticket(
            {"pool": pool, "path": "/exp/x", "direction": "put", "size": 100, "ttl": 0.5}
        )
        small = c.ticket({"pool": pool, "path": "/exp/y", "direction": "put", "size": 10})
        wrong_way = c.ticket({"pool": pool, "path": "/exp/x", "direction": "get"})
    time.sleep(0.6)
    with pytest.raises(TransferError, match="has expired"):
        put(short, f)
    with pytest.raises(TransferError, match="allows 10 bytes"):
        put(small, f)
    bigger = small.ticket.claims.model_copy(update={"max_bytes": 1000})
    forged = small.model_copy(update={"ticket": small.ticket.model_copy(update={"claims": bigger})})
    with pytest.raises(TransferError, match="not signed by the node"):
        put(forged, f)
    with pytest.raises(TransferError, match="allows get, not put"):
        put(wrong_way, f)
    with shared.client() as c:
        removing = c.ticket({"pool": pool, "path": "/exp", "direction": "delete", "ttl": 3600})
    assert removing.ticket.claims.expires_at - time.time() <= 61  # a minute at most
    with pytest.raises(TransferError, match="allows delete, not get"):
        asyncio.run(transfer.get(removing, tmp_path / "got"))
    assert not (tmp_path / "got").exists()


def test_dot_dot_and_symlink_escapes_are_refused(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    f = tmp_path / "x"
    f.write_text("x")
    proc = cp(shared, str(f), f"{pool}:/../outside")
    assert proc.returncode == 1 and "'..' is not allowed" in proc.stderr
    assert "(path)" in proc.stderr and "Traceback" not in proc.stderr

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root_of(shared) / "escape").symlink_to(outside)
    proc = cp(shared, f"{pool}:/escape/secret", str(tmp_path / "stolen"))
    assert proc.returncode == 1 and "leads out of the data root through a link" in proc.stderr
    proc = cp(shared, str(f), f"{pool}:/escape/planted")
    assert proc.returncode == 1 and "leads out of the data root through a link" in proc.stderr
    assert not (tmp_path / "stolen").exists() and not (outside / "planted").exists()


def test_a_put_past_the_pools_data_quota_is_refused_before_bytes_flow(
    shared: Network, tmp_path: Path
) -> None:
    if "capped" not in shared.agents:
        shared.start_agent("capped", "--no-calibrate", "--data-quota", "300K")
    capped = shared.wait_pool("capped")
    root = root_of(shared, "capped")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(200_000))
    b.write_bytes(os.urandom(200_000))
    result(cp(shared, str(a), f"{capped}:/a.bin"))

    refused = cp(shared, str(b), f"{capped}:/sub/b.bin")
    assert refused.returncode == 1
    assert "data quota is 300.0 KiB and it holds 195.3 KiB" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    held = [p.relative_to(root).as_posix() for p in root.rglob("*") if ".cnet" not in p.parts]
    assert held == ["a.bin"]  # nothing of b.bin, not even its directory

    a.write_bytes(os.urandom(200_000))  # a file that replaces another takes no more room
    result(cp(shared, str(a), f"{capped}:/a.bin"))
    assert (root / "a.bin").read_bytes() == a.read_bytes()

    bad = shared.cnet("agent", "run", "--node", shared.url, "--token", "x", "--data-quota", "lots")
    assert bad.returncode == 2 and "--data-quota: invalid size 'lots'" in bad.stderr


def test_partial_files_past_their_days_are_swept_at_start(shared: Network) -> None:
    root = root_of(shared, "swept")
    (root / "in").mkdir(parents=True)
    old, kept = root / "in" / ".old.bin.cnetpart", root / "in" / "kept.bin"
    old.write_bytes(b"abandoned")
    kept.write_bytes(b"a file, not a partial one")
    time.sleep(1.0)  # older than --part-days below: 0.864 s
    shared.start_agent("swept", "--no-calibrate", "--part-days", "0.00001")
    shared.wait_pool("swept")
    deadline = time.monotonic() + 30
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not old.exists() and kept.exists()
    bad = shared.cnet("agent", "run", "--node", shared.url, "--token", "x", "--part-days", "0")
    assert bad.returncode == 2 and "--part-days: 0 is not a number of days above 0" in bad.stderr


def test_a_data_root_that_is_a_link_serves_listings_and_removals(
    shared: Network, tmp_path: Path
) -> None:
    """A data root linked to a larger disk: copies worked, and every ls and rm failed."""
    disk = tmp_path / "big-disk"
    (disk / "in").mkdir(parents=True)
    (disk / "in" / "a.txt").write_text("on the big disk")
    (tmp_path / "root").symlink_to(disk)
    if "linked" not in shared.agents:
        shared.start_agent("linked", "--no-calibrate", "--data-root", str(tmp_path / "root"))
    linked = shared.wait_pool("linked")
    assert [x.name for x in listed(shared, f"{linked}:/in").entries] == ["a.txt"]
    result(cp(shared, f"{linked}:/in/a.txt", str(tmp_path / "back.txt")))
    assert (tmp_path / "back.txt").read_text() == "on the big disk"
    assert removed(shared, f"{linked}:/in/a.txt").files == 1
    assert not (disk / "in" / "a.txt").exists()


def test_a_file_cannot_replace_a_directory_and_is_told_by_pool_path(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    (root_of(shared) / "taken" / "dir").mkdir(parents=True)
    (root_of(shared) / "taken" / "plain").write_bytes(b"a file")
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    over_dir = cp(shared, str(src), f"{pool}:/taken/dir")
    assert over_dir.returncode == 1
    assert over_dir.stderr.strip() == (
        "error: /taken/dir is a directory; a file cannot replace it: to copy into it, end "
        "the path with /"
    )
    under_file = cp(shared, str(src), f"{pool}:/taken/plain/f.bin")
    assert under_file.returncode == 1
    assert "/taken/plain: a file stands where a directory must be" in under_file.stderr
    assert str(root_of(shared)) not in under_file.stderr
    assert (root_of(shared) / "taken" / "plain").read_bytes() == b"a file"


def test_a_write_the_pool_cannot_make_stops_the_copy_with_its_reason(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    src = tmp_path / "tree"
    make_tree(src, 300, 5000)
    blocked = root_of(shared) / "blocked" / "d0" / "sub0"
    (blocked / ".f0.bin.cnetpart").mkdir(parents=True)  # where the first file's bytes go
    failed = cp(shared, "--streams", "1", str(src), f"{pool}:/blocked")
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        "error: the pool's data server cannot write the data: Is a directory"
    )
    assert not (blocked / "f0.bin").exists()


def answer(model: type[M], net: Network, *args: str) -> M:
    """What a ``--json`` command printed, once it succeeded."""
    proc = cli(net, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return model.model_validate_json(proc.stdout)


def listed(net: Network, *args: str) -> PoolListing:
    return answer(PoolListing, net, "ls", *args)


def test_ls_shows_a_pool_directory_in_pages_and_only_its_data(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    root = root_of(shared) / "listing"
    (root / "sub").mkdir(parents=True)
    for i in range(25):
        (root / f"f{i:02d}").write_bytes(b"x" * i)
    (root / ".f99.bin.cnetpart").write_bytes(b"half a copy")
    (root / "out").symlink_to("/etc")
    os.close(os.open(os.fsencode(root) + b"/latin-1 \xe9", os.O_CREAT | os.O_WRONLY))
    (root_of(shared) / ".cnet").mkdir(exist_ok=True)
    (root_of(shared) / "alias").symlink_to(root_of(shared))
    whole = listed(shared, f"{pool}:/listing")
    assert whole.kind is EntryKind.dir and whole.path == "/listing" and whole.next is None
    assert whole.unnamed == 1  # a name that is not UTF-8: counted, not shown
    names = [x.name for x in whole.entries]
    assert names == [*(f"f{i:02d}" for i in range(25)), "out", "sub"]
    kinds = {x.name: x.kind for x in whole.entries}
    assert kinds["out"] is EntryKind.link and kinds["sub"] is EntryKind.dir
    assert {x.name: x.size for x in whole.entries}["f07"] == 7

    pages, after = [], None
    while True:
        page = listed(
            shared, "--limit", "10", *(["--after", after] if after else []), f"{pool}:/listing"
        )
        pages.append([x.name for x in page.entries])
        if (after := page.next) is None:
            break
        assert after == page.entries[-1].name
    assert [len(p) for p in pages] == [10, 10, 7]
    assert [n for p in pages for n in p] == names
    with shared.client() as c:  # the SDK's own pages, and its bad arguments named
        assert [x.name for x in c.ls(f"{pool}:/listing", limit=10).entries] == names[:10]
        for bad, why in (
            (0, "limit: Input should be greater than or equal to 1, not 0"),
            (-1, "limit: "),
            ("", "after: "),
        ):
            kw: dict[str, Any] = {"after": bad} if bad == "" else {"limit": bad}
            with pytest.raises(ValueError, match=re.escape(why)):
                c.ls(f"{pool}:/listing", **kw)

    link = listed(shared, f"{pool}:/listing/out")
    assert link.kind is EntryKind.link and [x.name for x in link.entries] == ["out"]
    one = listed(shared, f"{pool}:/listing/f03")
    assert one.kind is EntryKind.file and [(x.name, x.size) for x in one.entries] == [("f03", 3)]
    assert ".cnet" not in {x.name for x in listed(shared, f"{pool}:/").entries}
    shown = cli(shared, "ls", f"{pool}:/listing")
    assert shown.returncode == 0 and "sub/" in shown.stdout and "f24" in shown.stdout

    for target, why in [
        (f"{pool}:/listing/none", "/listing/none: no such file or directory in the pool"),
        (f"{pool}:/listing/out/passwd", "'/listing/out' is a link or a file"),
        (f"{pool}:/alias/.cnet", "'/alias' is a link or a file"),
        (f"{pool}:/../etc", ".."),
        ("/tmp", "name a pool path"),
    ]:
        bad = cli(shared, "ls", target)
        assert bad.returncode != 0 and why in bad.stderr, (target, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    into = cli(shared, "cp", f"{pool}:/alias/.cnet", str(tmp_path / "server-files"))
    assert into.returncode == 1 and ".cnet is reserved" in into.stderr
    (root_of(shared) / "alias").unlink()


def removed(net: Network, *args: str) -> Removal:
    return answer(Removal, net, "rm", *args)


def test_rm_takes_a_link_as_a_link_a_tree_only_with_r_and_never_the_root(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    root = root_of(shared) / "removing"
    make_tree(root / "tree", 12, 1000)
    (root / "tree" / ".left.bin.cnetpart").write_bytes(b"half")
    (root / "one.bin").write_bytes(b"x" * 100)
    (root / ".one.bin.cnetpart").write_bytes(b"half a copy")
    (root / "link").symlink_to(root / "one.bin")
    (root / ".never.bin.cnetpart").write_bytes(b"abandoned")  # all a killed copy left
    (tmp_path / "victim").write_text("outside the data root")
    (root / "out").symlink_to(tmp_path)
    (root_of(shared) / ".cnet").mkdir(exist_ok=True)

    never = removed(shared, f"{pool}:/removing/never.bin")
    assert (never.kind, never.files, never.bytes) == (EntryKind.file, 1, len(b"abandoned"))
    assert not (root / ".never.bin.cnetpart").exists()

    gone = removed(shared, f"{pool}:/removing/link")
    assert (gone.kind, gone.files, gone.path) == (EntryKind.link, 1, "/removing/link")
    assert (root / "one.bin").read_bytes() == b"x" * 100

    flat = cli(shared, "rm", f"{pool}:/removing/tree")
    assert flat.returncode == 1 and "is a directory" in flat.stderr and "-r" in flat.stderr
    assert (root / "tree" / "empty-file").exists()
    tree = removed(shared, "-r", f"{pool}:/removing/tree")
    assert (tree.kind, tree.files, tree.bytes) == (EntryKind.dir, 14, 12 * 1000 + 4)
    assert not (root / "tree").exists()

    (root_of(shared) / "alias").symlink_to(root_of(shared))
    (root / "kept.txt").write_text("stays")
    one = removed(shared, f"{pool}:/removing/one.bin")
    assert (one.kind, one.bytes) == (EntryKind.file, 100 + len("half a copy"))
    assert not (root / "one.bin").exists() and not (root / ".one.bin.cnetpart").exists()

    for target, why in [
        (f"{pool}:/", "the data root itself cannot be removed"),
        (f"{pool}:/removing/none", "/removing/none: no such file or directory in the pool"),
        (
            f"{pool}:/removing/out/victim",
            "'/removing/out' is a link or a file, not a directory (through a link, name the "
            "path it leads to)",
        ),
        (f"{pool}:/removing/kept.txt/x", "'/removing/kept.txt' is a link or a file"),
        (f"{pool}:/alias/.cnet", "'/alias' is a link or a file"),
        (f"{pool}:/../etc", ".."),
        (f"{pool}:/.cnet", "reserved"),
        ("/tmp/x", "name a pool path"),
    ]:
        bad = cli(shared, "rm", "-r", target)
        assert bad.returncode != 0 and why in bad.stderr, (target, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert (tmp_path / "victim").exists() and (root_of(shared) / ".cnet").is_dir()
    link = removed(shared, f"{pool}:/removing/out")
    assert link.kind is EntryKind.link and (tmp_path / "victim").exists()
    assert (root / "kept.txt").read_text() == "stays"
    assert removed(shared, f"{pool}:/alias").kind is EntryKind.link
    assert (root_of(shared) / ".cnet").is_dir()


def test_rm_waits_for_a_copy_of_the_path_to_end(shared: Network, pool: str, tmp_path: Path) -> None:
    src = tmp_path / "moving.bin"
    src.write_bytes(os.urandom(4 * CHUNK))
    env = dict(shared.env, CNET_TOKEN=shared.token, **{FAULTS: "stop:chunk=2"})
    args = ["cp", "--streams", "1", str(src), f"{pool}:/moving/dir/m.bin"]
    copy = subprocess.Popen([*PYTHON, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        held_open(copy, "its second chunk")
        for target in (f"{pool}:/moving", f"{pool}:/moving/dir/m.bin"):
            busy = cli(shared, "rm", "-r", target)
            assert busy.returncode == 1, busy.stderr
            assert "a copy of /moving/dir/m.bin is still moving" in busy.stderr
        assert (root_of(shared) / "moving" / "dir" / ".m.bin.cnetpart").exists()
        other = root_of(shared) / "moving-not"
        other.mkdir()
        assert removed(shared, "-r", f"{pool}:/moving-not").kind is EntryKind.dir
    finally:
        copy.send_signal(signal.SIGCONT)
    _, err = copy.communicate(timeout=60)
    assert copy.returncode == 0, err
    assert (root_of(shared) / "moving" / "dir" / "m.bin").read_bytes() == src.read_bytes()
    manifests = root_of(shared) / ".cnet" / "manifests"
    assert any(b'"path":"/moving/dir/m.bin"' in p.read_bytes()[:100] for p in manifests.iterdir())
    assert removed(shared, "-r", f"{pool}:/moving").files == 1
    assert not (root_of(shared) / "moving").exists()
    assert not any(b'"path":"/moving/' in p.read_bytes()[:100] for p in manifests.iterdir())


def test_a_tenant_reaches_its_own_home_and_reads_the_datasets(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    with shared.client() as admin:
        a = admin.create_token("home-a", "home-a").secret
        b = admin.create_token("home-b", "home-b").secret
    mine = tmp_path / "mine.txt"
    mine.write_bytes(b"a's own\n")
    at = f"{pool}:/home/home-a/mine.txt"
    assert shared.cnet("cp", str(mine), at, token=a).returncode == 0

    def refused(token: str, tenant: str, *args: str) -> None:
        proc = shared.cnet(*args, token=token)
        assert proc.returncode == 1, proc.stdout
        assert f"outside what tenant {tenant} may reach" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    refused(a, "home-a", "cp", str(mine), f"{pool}:/shared/x")
    refused(a, "home-a", "ls", f"{pool}:/")
    stolen = tmp_path / "stolen"
    refused(b, "home-b", "cp", at, str(stolen))
    refused(b, "home-b", "ls", f"{pool}:/home/home-a")
    refused(b, "home-b", "rm", at)
    assert not stolen.exists() and not (root_of(shared) / "shared").exists()
    assert (root_of(shared) / "home/home-a/mine.txt").read_bytes() == b"a's own\n"
    assert cli(shared, "ls", f"{pool}:/home/home-a").returncode == 0  # the admin's token
    (root_of(shared) / "home/home-b").mkdir()
    (root_of(shared) / "home/home-b/secret").write_text("b's own")
    (root_of(shared) / "home/home-a/to-b").symlink_to("../home-b")  # as a job could
    for args in (
        ["cp", f"{pool}:/home/home-a/to-b/secret", str(stolen)],
        ["cp", str(mine), f"{pool}:/home/home-a/to-b/planted"],
    ):
        proc = shared.cnet(*args, token=a)
        assert proc.returncode == 1 and "'/home/home-a/to-b' is a link" in proc.stderr
    assert not stolen.exists() and not (root_of(shared) / "home/home-b/planted").exists()

    r = httpx.post(
        f"{shared.url}/v1/transfers",
        json={"pool": pool, "path": "/home/home-a/x", "direction": "put", "size": 1},
        headers={"authorization": f"Bearer {b}"},
    )
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "path"

    data = tmp_path / "set"
    data.mkdir()
    (data / "a.txt").write_bytes(b"for everyone\n")
    pub = shared.cnet("cp", "--pool", pool, str(data), "cnet://dataset/homes-set", token=a)
    assert pub.returncode == 0, pub.stderr
    read = shared.cnet("cp", "cnet://dataset/homes-set", str(tmp_path / "read"), token=b)
    assert read.returncode == 0, read.stderr
    assert (tmp_path / "read" / "a.txt").read_bytes() == b"for everyone\n"
    for path, says in [
        ("/datasets/homes-set/v9", "belongs to tenant home-a"),
        ("/datasets/homes-set@9", "belongs to tenant home-a"),
        ("/datasets/homes-set", "outside what tenant home-b may reach"),
    ]:
        r = httpx.post(
            f"{shared.url}/v1/transfers",
            json={"pool": pool, "path": path, "direction": "put", "size": 1},
            headers={"authorization": f"Bearer {b}"},
        )
        assert r.status_code == 403 and says in r.json()["detail"], r.text
    kept = result(shared.cnet("cp", "--json", str(data), f"{pool}:/home/home-a/kept", token=a))
    own = {"name": "homes-kept", "pool": pool, "path": "/home/home-a/kept", "files": 1}
    r = httpx.post(
        f"{shared.url}/v1/datasets",
        json={**own, "tree_hash": kept.tree_hash, "total_bytes": kept.total_bytes},
        headers={"authorization": f"Bearer {a}"},
    )
    assert r.status_code == 201, r.text
    read = shared.cnet("cp", "cnet://dataset/homes-kept", str(tmp_path / "kept"), token=b)
    assert read.returncode == 0, read.stderr  # a copy is read by all, wherever it lies
    assert (tmp_path / "kept" / "a.txt").read_bytes() == b"for everyone\n"
    grab = {"name": "grab", "pool": pool, "path": "/home/home-a/mine.txt", "total_bytes": 8}
    r = httpx.post(
        f"{shared.url}/v1/datasets",
        json={**grab, "tree_hash": "0" * 64, "files": 1},
        headers={"authorization": f"Bearer {b}"},
    )
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "path", r.text

    theirs = {"uri": at, "path": "in"}
    unowned = {"path": "o", "uri": f"{pool}:/datasets/homes-none/o"}
    cases = [
        ("/v1/jobs", {"command": ["true"], "inputs": [theirs]}, "inputs.0.uri"),
        ("/v1/jobs", {"command": ["true"], "outputs": [unowned]}, "outputs.0.uri"),
        (
            "/v1/jobs/batch",
            {"jobs": [{"command": ["true"], "outputs": [{**theirs, "path": "o"}]}]},
            "jobs.0.outputs.0.uri",
        ),
    ]
    for route, body, field in cases:
        r = httpx.post(f"{shared.url}{route}", json=body, headers={"authorization": f"Bearer {b}"})
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == field, r.text
    with shared.client(a) as c:
        job = c.submit(
            command=["sh", "-c", "tr a-z A-Z < in > out"],
            inputs=[theirs],
            outputs=[{"path": "out", "uri": f"{pool}:/home/home-a/upper.txt"}],
        )
        job = c.wait(job.id, timeout=90)
    assert job.state.value == "COMPLETE", job.reason
    assert (root_of(shared) / "home/home-a/upper.txt").read_bytes() == b"A'S OWN\n"
    with shared.client(a) as c:
        job = c.submit(
            command=["true"], inputs=[{"uri": f"{pool}:/home/home-a/to-b/secret", "path": "in"}]
        )
        job = c.wait(job.id, timeout=90)
    assert job.state.value == "FAILED" and "is a link" in (job.reason or ""), job.reason


def test_a_tenants_home_holds_no_more_than_its_data_quota(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    with shared.client() as admin:
        q = admin.create_token("home-q", "home-q").secret
    capped = cli(shared, "tenant", "set", "home-q", "--max-data", "1K")
    assert capped.returncode == 0 and "max data 1.0 KiB" in capped.stdout, capped.stderr
    assert "note" not in capped.stderr  # its token names it
    typo = cli(shared, "tenant", "set", "home-qq", "--max-data", "1K")
    assert typo.returncode == 0 and "no live token names it" in typo.stderr, typo.stderr
    f = tmp_path / "600"
    f.write_bytes(b"x" * 600)
    home = root_of(shared) / "home" / "home-q"
    assert shared.cnet("cp", str(f), f"{pool}:/home/home-q/a", token=q).returncode == 0
    over = shared.cnet("cp", str(f), f"{pool}:/home/home-q/b", token=q)
    assert over.returncode == 1 and "tenant home-q's home quota is 1.0 KiB" in over.stderr
    assert not (home / "b").exists()
    again = shared.cnet("cp", str(f), f"{pool}:/home/home-q/a", token=q)
    assert again.returncode == 0, again.stderr  # a replaced file counts only the difference
    assert cli(shared, "cp", str(f), f"{pool}:/home/home-q/by-admin").returncode == 0

    with shared.client(q) as c:
        job = c.submit(
            command=["sh", "-c", "head -c 2000 /dev/zero > o"],
            pool=pool,
            outputs=[{"path": "o", "uri": f"{pool}:/home/home-q/o"}],
        )
        job = c.wait(job.id, timeout=90)
    assert job.state.value == "FAILED", job.reason
    assert "tenant home-q's home quota is 1.0 KiB" in (job.reason or ""), job.reason
    assert not (home / "o").exists()

    assert cli(shared, "tenant", "set", "home-q", "--max-data", "1M").returncode == 0
    assert shared.cnet("cp", str(f), f"{pool}:/home/home-q/b", token=q).returncode == 0
    listed = cli(shared, "tenant", "list")
    assert any(ln.split()[0] == "home-q" and "1.0 MiB" in ln for ln in listed.stdout.splitlines())
    bad = cli(shared, "tenant", "set", "home-q", "--max-data", "lots")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--max-data" in bad.stderr


def test_bad_ticket_requests_are_4xx_naming_the_field(shared: Network, pool: str) -> None:
    h = {"authorization": f"Bearer {shared.token}"}
    cases = [
        ({"pool": pool, "path": "/a/../../b", "direction": "put"}, 422, "path"),
        ({"pool": pool, "path": "/a", "direction": "sideways"}, 422, "direction"),
        ({"pool": pool, "path": "/a", "direction": "put", "size": -1}, 422, "size"),
        ({"pool": pool, "path": "/a", "direction": "put", "ttl": 0}, 422, "ttl"),
        ({"pool": "cpi:local:local/nope", "path": "/a", "direction": "get"}, 404, "pool"),
    ]
    for body, status, field in cases:
        resp = httpx.post(f"{shared.url}/v1/transfers", json=body, headers=h)
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["errors"][0]["field"] == field
    assert httpx.post(f"{shared.url}/v1/transfers", json=cases[0][0]).status_code == 401
    assert httpx.get(f"{shared.url}/v1/transfers/key").json()["public_key"]


def test_cli_refuses_bad_locations_in_one_line(shared: Network, tmp_path: Path) -> None:
    for args in (
        [str(tmp_path), str(tmp_path / "b")],
        ["cpi:local:local:/x", str(tmp_path)],
        [str(tmp_path / "missing"), "cpi:local:local/alpha:/x"],
    ):
        proc = cp(shared, *args)
        assert proc.returncode != 0
        assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_a_file_sized_as_it_is_read_is_refused_not_copied_empty(
    shared: Network, pool: str, tmp_path: Path
) -> None:
    proc = cp(shared, "/proc/self/status", f"{pool}:/status")
    assert proc.returncode == 1 and "reads as more than its size of 0 bytes" in proc.stderr
    assert not (root_of(shared) / "status").exists()
    (tmp_path / "empty").write_bytes(b"")  # a file that is empty is copied as one
    assert cp(shared, str(tmp_path / "empty"), f"{pool}:/empty").returncode == 0
    assert (root_of(shared) / "empty").read_bytes() == b""


@pytest.mark.heavy
def test_two_gib_and_ten_thousand_files_between_two_agents(
    shared: Network, pool: str, beta: str, tmp_path: Path
) -> None:
    big = tmp_path / "two.bin"
    with big.open("wb") as fh:
        block = os.urandom(64 << 20)
        for i in range(32):
            fh.write(block[i:] + block[:i])
    r = result(cp(shared, str(big), f"{pool}:/heavy/two.bin", timeout=300))
    assert r.counters.bytes == 2 << 30
    across = result(cp(shared, f"{pool}:/heavy/two.bin", f"{beta}:/heavy/two.bin", timeout=300))
    assert across.tree_hash == r.tree_hash and across.counters.bytes == 2 << 30
    landed = root_of(shared, "beta") / "heavy" / "two.bin"
    assert subprocess.run(["cmp", str(big), str(landed)]).returncode == 0
    for name in ("alpha", "beta"):
        (root_of(shared, name) / "heavy" / "two.bin").unlink()
    big.unlink()

    tree = tmp_path / "many"
    for i in range(10_000):
        p = tree / f"d{i // 100:03d}" / f"f{i:05d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(100 << 10))
    up = result(cp(shared, str(tree), f"{pool}:/heavy/many", timeout=300))
    assert up.counters.files == 10_000
    across2 = result(cp(shared, f"{pool}:/heavy/many", f"{beta}:/heavy/many", timeout=300))
    assert across2.counters.files == 10_000 and across2.tree_hash == up.tree_hash
    landed = root_of(shared, "beta") / "heavy" / "many"
    assert subprocess.run(["diff", "-r", str(tree), str(landed)]).returncode == 0
    seconds = {k: x.seconds for k, x in [("2g", across), ("10k", across2)]}
    print(json.dumps({"agent_to_agent_seconds": seconds}))
