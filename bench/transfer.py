"""Transfer throughput over loopback, side by side with the link's limit and the usual tools.

    .venv/bin/python bench/transfer.py [--repeat 3] [--dir /dev/shm] [--settle 3]

Two workloads: one 2 GiB file and a tree of 10,000 files of 100 KiB. In the same run, on
the same data:

- iperf3 on 127.0.0.1 with 1 and 4 streams: the link's own limit, no disk, no checks;
- ``cp`` (``cp -r``): no network at all;
- for the file, ``dd`` from ``/dev/zero`` into the destination: only the writing that
  any receiver must do, the ceiling of every tool here;
- ``scp`` and ``rsync -e ssh`` to an sshd this script starts on 127.0.0.1;
- computenet: ``cnet cp`` from one agent's pool to another's, so the bytes go agent to
  agent, with verification on (every chunk's BLAKE3 checked): the file with 1 and 4
  streams without TLS and with 4 streams over TLS, the tree with the streams chosen by
  size (one, for small files), without and with TLS.

computenet's rate is taken from the copy's own ``seconds`` (hashing the source, the
streams and the commit, as the sending agent timed it); the wall time of the ``cnet``
command, which adds starting Python and asking the node for tickets, is in the JSON too.
A data server keeps the chunk hashes of files it has already sent while they are
unchanged, so after the warm-up run the source is not hashed again; the rows marked
"source changed" touch the source before each run, so that it is hashed afresh, as on
its first copy.
Each figure is the median of ``--repeat`` runs after one untimed warm-up run per tool. The
tools take turns: each round runs every tool once, each round starting one tool further
on, so that a machine whose speed drifts weighs on all of them alike. The destination is
removed and the page cache flushed to disk between runs, outside the timing.

The data lives on ``--dir``, tmpfs by default where there is one: this compares
protocols, and on a slow disk every tool would measure the disk's file creation instead.
Results: bench/results/transfer.json and transfer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import CLI, Deployment, free_port, machine, write

GIB = 1 << 30
BIG = 2 * GIB
FILES, FILE_SIZE = 10_000, 100 << 10
SSH_OPTS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
]


def make_data(base: Path) -> tuple[Path, Path]:
    big, tree = base / "src" / "big.bin", base / "src" / "tree"
    big.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(64 << 20)
    with big.open("wb") as fh:
        for i in range(BIG // len(block)):
            fh.write(block[i:] + block[:i])
    for i in range(FILES):
        p = tree / f"d{i // 100:03d}" / f"f{i:05d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(FILE_SIZE))
    return big, tree


# A receiver's least work for the tree: each file created and written from memory, no
# source read, no network, no hash.
WRITE_TREE = f"""
import os, sys
block = os.urandom({FILE_SIZE})
for i in range({FILES}):
    p = os.path.join(sys.argv[1], "d%03d" % (i // 100), "f%05d" % i)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, block)
    os.close(fd)
"""

REPORTING = Path("/sys/module/page_reporting/parameters")


def reported() -> dict[str, int] | None:
    """The guest kernel's free page reporting, where it runs: freed memory handed back to
    the host, which a later write must fault in again (the cost every writer here pays)."""
    try:
        return {
            "order": int((REPORTING / "page_reporting_order").read_text()),
            "reported_kib": int((REPORTING / "reported_kib").read_text()),
        }
    except (OSError, ValueError):
        return None


def touch(path: Path) -> None:
    """A new ctime for every file under ``path``: a data server hashes them afresh."""
    for p in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.utime(p)


def clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.sync()


def once(
    run: Callable[[], Any], dest: Path, settle: float, reset: Callable[[], None] | None = None
) -> tuple[float, Any]:
    """Seconds of one run (a run may return its own figure) and its value. ``settle``
    seconds pass between removing the last output and the run: a virtual machine hands
    freed memory back to its host within about two seconds, and pages it must take back
    cost 2-3 times as much to write. Without the pause, a tool that starts at once
    (``cp``) writes into warm pages and one that starts a Python process first may or
    may not. ``reset``, where given, prepares the destination instead of removing it."""
    clear(dest)
    if reset is not None:
        reset()
        os.sync()
    time.sleep(settle)
    t = time.perf_counter()
    last = run()
    took = time.perf_counter() - t
    return (float(last["seconds"]) if isinstance(last, dict) else took), last


def timed(
    run: Callable[[], Any],
    dest: Path,
    repeat: int,
    settle: float,
    reset: Callable[[], None] | None = None,
) -> tuple[list[float], Any]:
    """``repeat`` runs after one that warms up (memory a virtual machine has not touched
    yet is slow): their seconds, and the last run's value."""
    seconds, last = [], None
    for i in range(repeat + 1):
        took, last = once(run, dest, settle, reset)
        if i:
            seconds.append(took)
    return seconds, last


def rounds(
    runs: dict[str, tuple[Callable[[], Any], Path]], repeat: int, settle: float
) -> dict[str, tuple[list[float], Any]]:
    """Every tool once a round, a warm-up round first, each round starting one tool
    further on: a machine whose speed drifts during the run (memory handed back to the
    host, a neighbour's load) weighs on every tool alike, not on those run last. Each
    output is removed after its run, so that only one is held at a time."""
    out: dict[str, tuple[list[float], Any]] = {k: ([], None) for k in runs}
    names = list(runs)
    for r in range(repeat + 1):
        for tool in names[r % len(names) :] + names[: r % len(names)]:
            run, where = runs[tool]
            took, last = once(run, where, settle)
            clear(where)
            out[tool] = (out[tool][0] + ([took] if r else []), last)
    return out


def sh(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


# --- iperf3 ---------------------------------------------------------------------------


def iperf3(streams: int, seconds: int = 5) -> float:
    port = free_port()
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            probe = subprocess.run(
                [
                    "iperf3",
                    "-c",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-t",
                    str(seconds),
                    "-P",
                    str(streams),
                    "-J",
                ],
                capture_output=True,
                text=True,
            )
            end = json.loads(probe.stdout or "{}").get("end", {})
            if "sum_received" in end:
                return float(end["sum_received"]["bits_per_second"]) / 8e9
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 did not run: {probe.stderr}")
    finally:
        server.kill()
        server.wait()


# --- sshd -----------------------------------------------------------------------------


class Sshd:
    """An sshd of its own on 127.0.0.1, with its own host key and one client key."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.key = home / "client"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "host")])
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        shutil.copy(home / "client.pub", home / "authorized_keys")
        (home / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {home / 'host'}\n"
            f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(home / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(home / "sshd.log", "wb"),  # noqa: SIM115
        )
        user = os.environ.get("USER") or "root"
        self.target = f"{user}@127.0.0.1"
        deadline = time.monotonic() + 20
        while subprocess.run([*self.ssh(), self.target, "true"], capture_output=True).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((home / "sshd.log").read_text())
            time.sleep(0.2)

    def ssh(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key), *SSH_OPTS]

    def scp(self, src: Path, dst: Path) -> None:
        flags = ["-r"] if src.is_dir() else []
        sh(
            [
                "scp",
                "-q",
                *flags,
                "-P",
                str(self.port),
                "-i",
                str(self.key),
                *SSH_OPTS,
                str(src),
                f"{self.target}:{dst}",
            ]
        )

    def rsync(self, src: Path, dst: Path) -> None:
        s = f"{src}/" if src.is_dir() else str(src)
        sh(["rsync", "-a", "-e", " ".join(self.ssh()), s, f"{self.target}:{dst}"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- computenet -----------------------------------------------------------------------


class Network(Deployment):
    """A node and two agents, alpha and beta, each serving its own data root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        super().__init__(agent_args=["--pool", "alpha", "--data-root", str(base / "alpha")])

    def _start(self) -> None:
        super()._start()
        args = ["agent", "run", "--node", self.url, "--token", self.token, "--pool", "beta"]
        args += ["--state-dir", str(self.home / "beta"), "--data-root", str(self.base / "beta")]
        self.procs.append(self._spawn("beta.log", args))
        headers = {"authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + 120
        while True:
            pools = httpx.get(f"{self.url}/v1/pools", headers=headers).json()
            names = {p["cpi"].rsplit("/", 1)[-1]: p["cpi"] for p in pools}
            if {"alpha", "beta"} <= set(names) and all(p["status"] == "online" for p in pools):
                self.cpis = names
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agents did not come online: {pools}")
            time.sleep(0.2)

    def cp(
        self,
        name: str,
        streams: int | None,
        tls: bool,
        changed: bool = False,
        sync: str | None = None,
    ) -> dict[str, Any]:
        if changed:
            touch(self.base / "alpha" / name)
        a, b = self.cpis["alpha"], self.cpis["beta"]
        args = [*CLI, "cp", "--json", "--tls" if tls else "--no-tls"]
        args += ["--streams", str(streams)] if streams else []
        args += ["--sync", sync] if sync else []
        t = time.perf_counter()
        out = sh(
            [*args, f"{a}:/{name}", f"{b}:/{name}"], env=dict(self.env(), CNET_TOKEN=self.token)
        )
        result: dict[str, Any] = json.loads(out.stdout)
        result["wall_seconds"] = time.perf_counter() - t
        return result


# --- the run --------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    shm = Path("/dev/shm")
    default = shm if shm.is_dir() and shutil.disk_usage(shm).free > 12 * GIB else None
    ap.add_argument("--dir", type=Path, default=default, help="where the data lives")
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds between removing a run's output and the next run",
    )
    opts = ap.parse_args()
    for tool in ("iperf3", "scp", "rsync", "ssh-keygen", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/transfer.py needs {tool}: apt-get install iperf3 openssh-server rsync")
    base = Path(tempfile.mkdtemp(prefix="cnet-transfer-", dir=opts.dir))
    rows: dict[str, dict[str, Any]] = {}
    try:
        print("making 2 GiB and 10,000 x 100 KiB ...", flush=True)
        big, tree = make_data(base)
        before = reported()
        link = {f"iperf3 {n}": iperf3(n) for n in (1, 4)}
        print(json.dumps(link), flush=True)
        sshd = Sshd(base / "ssh")
        net = Network(base)
        try:
            net.__enter__()
            (base / "alpha").mkdir(exist_ok=True)
            sh(["cp", "-r", str(big), str(tree), str(base / "alpha")])
            for label, src in (("file", big), ("tree", tree)):
                nbytes = BIG if label == "file" else FILES * FILE_SIZE
                dst = base / "dst" / src.name
                dst.parent.mkdir(exist_ok=True)
                runs: dict[str, Callable[[], Any]] = {
                    "cp": lambda s=src, d=dst: sh(["cp", "-r", str(s), str(d)]),
                    "scp": lambda s=src, d=dst: sshd.scp(s, d),
                    "rsync -e ssh": lambda s=src, d=dst: sshd.rsync(s, d),
                }
                if label == "file":  # a receiver's ceiling: only writing the file, no source
                    runs["write only (dd from /dev/zero)"] = lambda d=dst: sh(
                        ["dd", "if=/dev/zero", f"of={d}", "bs=8M", f"count={BIG >> 23}"]
                    )
                    runs["computenet 1 stream"] = lambda s=src: net.cp(s.name, 1, False)
                    runs["computenet 4 streams"] = lambda s=src: net.cp(s.name, 4, False)
                    runs["computenet 4 streams TLS"] = lambda s=src: net.cp(s.name, 4, True)
                    runs["computenet 1 stream, source changed"] = lambda s=src: net.cp(
                        s.name, 1, False, changed=True
                    )
                else:  # streams by size: a core each, for small files
                    runs["write only (10,000 files from memory)"] = lambda d=dst: sh(
                        [sys.executable, "-c", WRITE_TREE, str(d)]
                    )
                    runs["computenet"] = lambda s=src: net.cp(s.name, None, False)
                    runs["computenet TLS"] = lambda s=src: net.cp(s.name, None, True)
                    runs["computenet, source changed"] = lambda s=src: net.cp(
                        s.name, None, False, changed=True
                    )
                placed = {
                    tool: (run, base / "beta" / src.name if tool.startswith("computenet") else dst)
                    for tool, run in runs.items()
                }
                for tool, (seconds, last) in rounds(placed, opts.repeat, opts.settle).items():
                    row = {
                        "seconds": [round(x, 3) for x in seconds],
                        "median_s": round(median(seconds), 3),
                        "GBps": round(nbytes / median(seconds) / 1e9, 3),
                    }
                    if isinstance(last, dict):
                        row["wall_s"] = round(last["wall_seconds"], 3)
                        row["verified_chunks"] = last["counters"]["chunks"]
                        row["files"] = last["counters"]["files"]
                    rows[f"{label}: {tool}"] = row
                    print(f"{label:5} {tool:26} {row['GBps']:7.3f} GB/s  {seconds}", flush=True)
        finally:
            net.__exit__()
            sshd.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    after = reported()
    vm = None
    if before is not None and after is not None:
        gib = (after["reported_kib"] - before["reported_kib"]) / (1 << 20)
        vm = {"page_reporting_order": after["order"], "reported_GiB": round(gib, 1)}
    report(link, rows, opts, vm)


def report(
    link: dict[str, float],
    rows: dict[str, dict[str, Any]],
    opts: Any,
    vm: dict[str, Any] | None = None,
) -> None:
    def rate(key: str) -> float:
        return float(rows[key]["GBps"])

    ratios = {
        "file, 1 stream, no TLS / iperf3 1 stream": rate("file: computenet 1 stream")
        / link["iperf3 1"],
        "file, 4 streams, no TLS / iperf3 4 streams": rate("file: computenet 4 streams")
        / link["iperf3 4"],
        "file, 4 streams, TLS / scp": rate("file: computenet 4 streams TLS") / rate("file: scp"),
        "tree, no TLS / rsync -e ssh": rate("tree: computenet") / rate("tree: rsync -e ssh"),
        "tree, TLS / rsync -e ssh": rate("tree: computenet TLS") / rate("tree: rsync -e ssh"),
        "file, 1 stream, source changed / iperf3 1 stream": rate(
            "file: computenet 1 stream, source changed"
        )
        / link["iperf3 1"],
        "tree, source changed / rsync -e ssh": rate("tree: computenet, source changed")
        / rate("tree: rsync -e ssh"),
        "file, 1 stream, no TLS / cp": rate("file: computenet 1 stream") / rate("file: cp"),
        "tree, no TLS / cp": rate("tree: computenet") / rate("tree: cp"),
        "file, write only / iperf3 1 stream (any receiver's ceiling)": rate(
            "file: write only (dd from /dev/zero)"
        )
        / link["iperf3 1"],
        "tree, write only / rsync -e ssh (any receiver's ceiling)": rate(
            "tree: write only (10,000 files from memory)"
        )
        / rate("tree: rsync -e ssh"),
    }
    targets = {
        "file, 1 stream, no TLS / iperf3 1 stream": 0.7,
        "file, 4 streams, no TLS / iperf3 4 streams": 0.7,
        "file, 4 streams, TLS / scp": 3.0,
        "tree, no TLS / rsync -e ssh": 5.0,
        "tree, TLS / rsync -e ssh": 5.0,
    }
    data = {
        "machine": machine(),
        "dir": str(opts.dir or tempfile.gettempdir()),
        "repeat": opts.repeat,
        "settle_s": opts.settle,
        "link_GBps": {k: round(v, 3) for k, v in link.items()},
        "runs": rows,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": targets,
        "free_page_reporting": vm,
    }
    lines = [
        "# Transfer over loopback",
        "",
        f"`.venv/bin/python bench/transfer.py --repeat {opts.repeat} --settle {opts.settle:g}`; "
        f"data on `{data['dir']}`; median of {opts.repeat} runs after a warm-up, the tools "
        "taking turns (a round runs each once, each round starting one further on), each run "
        f"{opts.settle:g} s after the last one's output was removed; computenet copies agent "
        "to agent with every chunk's BLAKE3 verified.",
        "",
        f"iperf3: {link['iperf3 1']:.2f} GB/s on 1 stream, {link['iperf3 4']:.2f} GB/s on 4.",
        "",
    ]
    if vm is not None:
        lines += [
            "This machine's kernel hands freed memory back to its host (free page reporting, "
            f"blocks of order {vm['page_reporting_order']}): {vm['reported_GiB']} GiB during "
            "this run. Writing into such memory again faults to the host, so every tool that "
            'writes pays for it, and the "write only" rows are what any receiver pays.',
            "",
        ]
    lines += [
        "| workload: tool | GB/s | median s | runs (s) |",
        "| --- | ---: | ---: | --- |",
    ]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['GBps']:.3f} | {r['median_s']:.3f} | {r['seconds']} |")
    lines += ["", "| ratio | measured | target |", "| --- | ---: | ---: |"]
    for k, v in ratios.items():
        target = f"{targets[k]:.1f}" if k in targets else "(for the record)"
        lines.append(f"| {k} | {v:.2f} | {target} |")
    write("transfer", data, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
