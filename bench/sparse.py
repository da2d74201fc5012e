"""A sparse disk image over loopback, side by side with the tools that know holes.

    .venv/bin/python bench/sparse.py [--repeat 3] [--size-gib 4]

The image is ``--size-gib`` GiB of which 32 MiB hold data: 8 MiB at its start, then
3 MiB at a few offsets that are not chunk-aligned, the rest holes (a fresh VM disk
looks like this). In the same run, on the same image:

- ``cp --sparse=always``: no network; reads the whole image (holes read as zeros) and
  writes only the data;
- ``rsync -S -e ssh`` to an sshd this script starts on 127.0.0.1: ``-S`` keeps holes at
  the destination, but the sender reads and sends every byte;
- ``scp``: writes the image dense;
- computenet: ``cnet cp`` from one agent's pool to another's, verification on; the
  source is touched before each run so that its chunks are hashed afresh (a chunk that
  is all hole is hashed without reading it).

Reported: seconds (median of ``--repeat`` after a warm-up) and the disk the copy takes
(``st_blocks``). Results: bench/results/sparse.json and sparse.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, write
from bench.transfer import Network, Sshd, clear, median, sh, timed

MIB = 1 << 20


def make_image(path: Path, size: int) -> int:
    """The image, and the bytes of data in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = 0
    with path.open("wb") as f:
        f.write(os.urandom(8 * MIB))
        data += 8 * MIB
        for k in range(1, 9):
            f.seek(k * size // 10 + 12345)
            f.write(os.urandom(3 * MIB))
            data += 3 * MIB
        f.truncate(size)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size-gib", type=int, default=4)
    opts = ap.parse_args()
    size = opts.size_gib << 30
    base = Path(tempfile.mkdtemp(prefix="cnet-sparse-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        image = base / "alpha" / "disk.img"
        data = make_image(image, size)
        sshd = Sshd(base / "ssh")
        net = Network(base)
        try:
            net.__enter__()
            dst = base / "dst" / "disk.img"
            dst.parent.mkdir()
            runs = {
                "cp --sparse=always": lambda: sh(["cp", "--sparse=always", str(image), str(dst)]),
                "rsync -S -e ssh": lambda: sh(
                    ["rsync", "-S", "-e", " ".join(sshd.ssh()), str(image), f"{sshd.target}:{dst}"]
                ),
                "scp": lambda: sshd.scp(image, dst),
                "computenet": lambda: net.cp("disk.img", None, False, changed=True),
            }
            for tool, run in runs.items():
                where = base / "beta" / "disk.img" if tool == "computenet" else dst
                seconds, last = timed(run, where, opts.repeat, 1.0)
                st = where.stat()
                assert st.st_size == size, (tool, st.st_size)
                rows[tool] = {
                    "seconds": [round(x, 3) for x in seconds],
                    "median_s": round(median(seconds), 3),
                    "disk_MiB": round(st.st_blocks * 512 / MIB, 1),
                }
                if isinstance(last, dict):
                    rows[tool]["wall_s"] = round(last["wall_seconds"], 3)
                    rows[tool]["bytes_moved"] = last["counters"]["bytes"]
                print(f"{tool:20} {rows[tool]}", flush=True)
                clear(where)
        finally:
            net.__exit__()
            sshd.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(rows, size, data, opts)


def report(rows: dict[str, dict[str, Any]], size: int, data: int, opts: Any) -> None:
    ratios = {
        f"computenet / {peer} (time, lower is faster)": rows["computenet"]["median_s"]
        / rows[peer]["median_s"]
        for peer in ("rsync -S -e ssh", "scp", "cp --sparse=always")
    }
    out = {
        "machine": machine(),
        "image_bytes": size,
        "data_bytes": data,
        "repeat": opts.repeat,
        "runs": rows,
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
    }
    lines = [
        "# A sparse image over loopback",
        "",
        f"`.venv/bin/python bench/sparse.py --repeat {opts.repeat} --size-gib {opts.size_gib}`; "
        f"an image of {size / 2**30:g} GiB holding {data / MIB:g} MiB of data; median of "
        f"{opts.repeat} runs after a warm-up; computenet copies agent to agent, verification "
        "on, the source hashed afresh each run.",
        "",
        "| tool | median s | disk the copy takes (MiB) | runs (s) |",
        "| --- | ---: | ---: | --- |",
    ]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['median_s']:.3f} | {r['disk_MiB']:g} | {r['seconds']} |")
    lines += ["", "| ratio | measured |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    write("sparse", out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
