"""What the job sandbox costs one job: ``true`` started and waited for through the local
backend, with ``sandbox=on`` and ``sandbox=off``, in rounds that alternate, in one run.

    .venv/bin/python bench/sandbox.py [--jobs 30] [--rounds 3]

No node and no network: the backend's own start and wait, as the agent calls them, so the
figure is the sandbox's (bubblewrap, and the reaper inside it) and nothing else's.
Results: bench/results/sandbox.json and sandbox.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, percentile, write
from computenet.agent.backends import Task
from computenet.agent.backends.local import LocalBackend
from computenet.model import JobSpec, JobState


async def jobs(mode: str, base: Path, n: int) -> list[float]:
    backend = LocalBackend(pin=False, sandbox=mode)
    await backend.open(base, (base / "jobs",))
    seconds = []
    for i in range(n):
        task = Task(
            f"j-{mode}{i}", 1, "bench", JobSpec(command=["true"]), [], base / "jobs" / f"{i}"
        )
        task.env = {"PATH": os.environ.get("PATH", os.defpath)}
        t = time.perf_counter()
        await backend.start(task)
        outcome = await backend.wait(task)
        seconds.append(time.perf_counter() - t)
        if outcome.state is not JobState.COMPLETE:
            raise RuntimeError(f"{mode}: {outcome.reason}")
    return seconds


async def run(n: int, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="cnet-sandbox-bench-") as d:
        for r in range(rounds):
            for mode in ("off", "on"):
                out[mode] += await jobs(mode, Path(d) / f"{mode}{r}", n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    runs = asyncio.run(run(opts.jobs, opts.rounds))
    ms = {
        mode: {
            "median_ms": round(statistics.median(xs) * 1000, 2),
            "p90_ms": round(percentile(xs, 90) * 1000, 2),
            "jobs": len(xs),
        }
        for mode, xs in runs.items()
    }
    res: dict[str, Any] = {"machine": machine(), "per_job": ms}
    res["ratio_on_to_off"] = round(ms["on"]["median_ms"] / ms["off"]["median_ms"], 1)
    text = "\n".join(
        [
            "# The job sandbox's cost per job",
            "",
            f"`.venv/bin/python bench/sandbox.py --jobs {opts.jobs} --rounds {opts.rounds}`: "
            "`true` started and waited for through the local backend.",
            "",
            "| sandbox | median ms | p90 ms | jobs |",
            "| --- | ---: | ---: | ---: |",
            *(f"| {m} | {v['median_ms']} | {v['p90_ms']} | {v['jobs']} |" for m, v in ms.items()),
            "",
            f"With the sandbox a job takes {res['ratio_on_to_off']}x as long to start and end.",
            "",
        ]
    )
    write("sandbox", res, text)
    print(text)


if __name__ == "__main__":
    main()
