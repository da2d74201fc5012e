"""A changed file over loopback, side by side with rsync's delta transfer.

    .venv/bin/python bench/delta.py [--repeat 3] [--size-gib 1]

The destination holds a file of ``--size-gib`` GiB (a checkpoint, say); its source has
since changed one byte at four offsets and grown by 8 MiB. Before each run the
destination gets the old version back, outside the timing. In the same run, on the
same data:

- ``rsync -e ssh`` to an sshd this script starts on 127.0.0.1: the receiver sends
  rolling checksums of its old file and the sender only what they do not match;
- ``scp``: sends the whole file;
- computenet: ``cnet cp --sync checksum`` from one agent's pool to another's,
  verification on: the receiver hashes its old file, copies the chunks the new version
  shares with it and asks only for the rest; and ``cnet cp`` without ``--sync``, which
  sends the file whole, for comparison.

Reported: seconds (median of ``--repeat`` after a warm-up; computenet's from the copy's
own ``seconds``) and the bytes that crossed the wire. Results: bench/results/delta.json
and delta.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, write
from bench.transfer import Network, Sshd, median, timed

MIB = 1 << 20
EDITS = 4


def make_versions(old: Path, new: Path, size: int) -> None:
    old.parent.mkdir(parents=True, exist_ok=True)
    new.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(64 * MIB)
    with old.open("wb") as fh:
        for i in range(size // len(block)):
            fh.write(block[i:] + block[:i])
    shutil.copyfile(old, new)
    with new.open("r+b") as fh:
        for k in range(EDITS):
            fh.seek(size * (2 * k + 1) // (2 * EDITS) + 4321)
            b = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([b[0] ^ 0xFF]))
        fh.seek(0, os.SEEK_END)
        fh.write(os.urandom(8 * MIB))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size-gib", type=int, default=1)
    opts = ap.parse_args()
    size = opts.size_gib << 30
    shm = Path("/dev/shm")
    room = shm.is_dir() and shutil.disk_usage(shm).free > 6 * size
    base = Path(tempfile.mkdtemp(prefix="cnet-delta-", dir=shm if room else None))
    rows: dict[str, dict[str, Any]] = {}
    try:
        old, new = base / "old.bin", base / "alpha" / "model.bin"
        make_versions(old, new, size)
        sshd = Sshd(base / "ssh")
        net = Network(base)
        try:
            net.__enter__()
            dst = base / "dst" / "model.bin"
            dst.parent.mkdir()
            (base / "beta").mkdir(exist_ok=True)
            runs: dict[str, tuple[Path, Callable[[], Any]]] = {
                "rsync -e ssh": (dst, lambda: sshd.rsync(new, dst)),
                "scp": (dst, lambda: sshd.scp(new, dst)),
                "computenet --sync checksum": (
                    base / "beta" / "model.bin",
                    lambda: net.cp("model.bin", None, False, sync="checksum"),
                ),
                "computenet, whole file": (
                    base / "beta" / "model.bin",
                    lambda: net.cp("model.bin", None, False),
                ),
            }
            for tool, (where, run) in runs.items():
                seconds, last = timed(
                    run, where, opts.repeat, 1.0, reset=lambda w=where: shutil.copyfile(old, w)
                )
                if not filecmp.cmp(new, where, shallow=False):
                    raise RuntimeError(f"{tool}: the copy differs from its source")
                rows[tool] = {
                    "seconds": [round(x, 3) for x in seconds],
                    "median_s": round(median(seconds), 3),
                }
                if isinstance(last, dict):
                    rows[tool]["wall_s"] = round(last["wall_seconds"], 3)
                    rows[tool]["wire_bytes"] = last["counters"]["wire_bytes"]
                    rows[tool]["chunks_present"] = last["counters"]["chunks_present"]
                print(f"{tool:28} {rows[tool]}", flush=True)
                where.unlink(missing_ok=True)
        finally:
            net.__exit__()
            sshd.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(rows, size, opts)


def report(rows: dict[str, dict[str, Any]], size: int, opts: Any) -> None:
    ours = rows["computenet --sync checksum"]["median_s"]
    ratios = {
        f"computenet --sync checksum / {peer} (time, lower is faster)": ours
        / rows[peer]["median_s"]
        for peer in ("rsync -e ssh", "scp", "computenet, whole file")
    }
    out = {
        "machine": machine(),
        "file_bytes": size,
        "edits": EDITS,
        "appended_bytes": 8 * MIB,
        "repeat": opts.repeat,
        "runs": rows,
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
    }
    lines = [
        "# A changed file over loopback",
        "",
        f"`.venv/bin/python bench/delta.py --repeat {opts.repeat} --size-gib {opts.size_gib}`; "
        f"the destination holds {size / 2**30:g} GiB, its source has {EDITS} bytes changed "
        "and 8 MiB appended; median of "
        f"{opts.repeat} runs after a warm-up; computenet copies agent to agent, verification "
        "on.",
        "",
        "| tool | median s | bytes on the wire | runs (s) |",
        "| --- | ---: | ---: | --- |",
    ]
    for k, r in rows.items():
        wire = f"{r['wire_bytes']:,}" if "wire_bytes" in r else "n/a"
        lines.append(f"| {k} | {r['median_s']:.3f} | {wire} | {r['seconds']} |")
    lines += ["", "| ratio | measured |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    write("delta", out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
