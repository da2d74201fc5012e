"""Function calls: 10,000 small calls through ``map`` and one call's round trip, side by
side with Ray local tasks in the same run.

    python bench/functions.py [--calls 10000] [--single 200]

computenet: a fresh node and local agent; an Executor with 2 warm workers (0.5 CPU each)
on this machine's pool. Ray: ``ray.init(num_cpus=2)`` and a ``@ray.remote`` function.
Both map the same trivial function (``abs``-like) and then time single calls one after
another. Writes bench/results/functions.json and functions.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Deployment, machine, percentile, write


def inc(x: int) -> int:
    return x + 1


def measure_computenet(calls: int, single: int) -> dict[str, Any]:
    import computenet

    with Deployment() as d:
        ex = computenet.Executor(resources={"cpus": 0.5}, workers=2, url=d.url, token=d.token)
        try:
            ex.submit(inc, 0).result(timeout=300)  # warm: workers started and connected
            t = time.perf_counter()
            out = list(ex.map(inc, range(calls), timeout=600))
            wall = time.perf_counter() - t
            assert out == [x + 1 for x in range(calls)]
            lat = []
            for i in range(single):
                t = time.perf_counter()
                ex.submit(inc, i).result(timeout=60)
                lat.append((time.perf_counter() - t) * 1000)
        finally:
            ex.shutdown()
    return _row("computenet", calls, wall, lat)


def measure_ray(calls: int, single: int) -> dict[str, Any]:
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; no token file left behind
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        remote_inc = ray.remote(inc)
        ray.get(remote_inc.remote(0))
        t = time.perf_counter()
        out = ray.get([remote_inc.remote(i) for i in range(calls)])
        wall = time.perf_counter() - t
        assert out == [x + 1 for x in range(calls)]
        lat = []
        for i in range(single):
            t = time.perf_counter()
            ray.get(remote_inc.remote(i))
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        ray.shutdown()
    return _row("ray", calls, wall, lat)


def _row(name: str, calls: int, wall: float, lat: list[float]) -> dict[str, Any]:
    return {
        "system": name,
        "calls": calls,
        "map_seconds": round(wall, 3),
        "calls_per_s": round(calls / wall, 1),
        "single_p50_ms": round(percentile(lat, 50), 3),
        "single_p99_ms": round(percentile(lat, 99), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--single", type=int, default=200)
    args = ap.parse_args()
    rows = [measure_computenet(args.calls, args.single), measure_ray(args.calls, args.single)]
    cn, ray_row = rows
    res: dict[str, Any] = {
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "results": rows,
        "map_ratio": round(cn["calls_per_s"] / ray_row["calls_per_s"], 3),
        "targets": {
            "single_p50_ms<=10": cn["single_p50_ms"] <= 10,
            "map_at_least_ray": cn["calls_per_s"] >= ray_row["calls_per_s"],
        },
    }
    lines = [
        "# Function calls: computenet Executor and Ray tasks",
        "",
        "| system | calls | map s | calls/s | single p50 ms | single p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['calls']} | {r['map_seconds']} | {r['calls_per_s']} | "
            f"{r['single_p50_ms']} | {r['single_p99_ms']} |"
        )
    lines += [
        "",
        f"computenet / Ray, calls per second over `map`: {res['map_ratio']}. Targets: single "
        f"call p50 ≤ 10 ms, map at least as fast as Ray: {res['targets']}.",
        "",
        "Command: `.venv/bin/python bench/functions.py`. computenet: a node and one local "
        "agent, an Executor with 2 warm workers of 0.5 CPU; Ray: `ray.init(num_cpus=2)`, the "
        "same function as a remote task. Both on this 2-core machine, one after the other.",
        "",
    ]
    text = "\n".join(lines)
    write("functions", res, text)
    print(text)


if __name__ == "__main__":
    main()
