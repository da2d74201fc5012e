"""1,000 trivial jobs through the SDK, side by side with a single-node Slurm in the same run.

    python bench/jobs.py [--jobs 1000] [--slurm-jobs 100] [--no-slurm]

Reports submit rate, end-to-end throughput (all complete) and submit→start latency, both
under load and one job at a time on an idle system, plus the machine's own limit (a bare
``subprocess.run(['true'])`` loop). Writes bench/results/jobs.json and jobs.md.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Deployment, machine, percentile, write
from computenet import AsyncClient
from computenet.model import Job, JobState

CONCURRENCY = 32


def bare_loop(seconds: float = 3.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        subprocess.run(["true"], check=True)
        n += 1
    return n / (time.perf_counter() - start)


def latencies_ms(jobs: list[Job]) -> list[float]:
    return [
        (j.started_at - j.created_at).total_seconds() * 1000
        for j in jobs
        if j.started_at is not None
    ]


async def throughput(c: AsyncClient, n: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> str:
        async with sem:
            return (await c.submit(command=["true"])).id

    t0 = time.perf_counter()
    ids = await asyncio.gather(*(one() for _ in range(n)))
    submitted = time.perf_counter()
    while True:
        counts = await c.counts()
        done = sum(counts.get(s.value, 0) for s in (JobState.COMPLETE, JobState.FAILED))
        if done >= n:
            break
        await asyncio.sleep(0.02)
    finished = time.perf_counter()
    jobs = [await c.get(i) for i in ids]
    lat = latencies_ms(jobs)
    failed = sum(j.state is not JobState.COMPLETE for j in jobs)
    return {
        "jobs": n,
        "failed": failed,
        "submit_rate_per_s": round(n / (submitted - t0), 1),
        "throughput_per_s": round(n / (finished - t0), 1),
        "wall_s": round(finished - t0, 3),
        "submit_to_start_under_load_p50_ms": round(percentile(lat, 50), 2),
        "submit_to_start_under_load_p99_ms": round(percentile(lat, 99), 2),
    }


async def latency(c: AsyncClient, n: int) -> dict[str, Any]:
    jobs = []
    for _ in range(n):
        job = await c.submit(command=["true"])
        jobs.append(await c.wait(job.id))
        await asyncio.sleep(0.01)
    lat = latencies_ms(jobs)
    return {
        "probes": n,
        "submit_to_start_p50_ms": round(percentile(lat, 50), 2),
        "submit_to_start_p99_ms": round(percentile(lat, 99), 2),
    }


async def computenet(n: int, probes: int) -> dict[str, Any]:
    with Deployment() as d:
        async with AsyncClient(d.url, d.token, max_connections=CONCURRENCY) as c:
            await latency(c, 10)  # warm up connections and code paths
            lat = await latency(c, probes)
            thr = await throughput(c, n)
    return {**thr, **lat}


def slurm(n: int, probes: int) -> dict[str, Any] | str:
    from bench.peers import slurm as peer

    why = peer.available()
    if why is not None:
        return f"Slurm not available: {why}"
    with peer.SlurmCluster(tuned=True) as cluster:
        thr = peer.run_trivial_jobs(cluster, n)
        lat = peer.latency_probe(cluster, probes)
    return {
        "jobs": n,
        "submit_rate_per_s": round(thr["submit_rate_per_s"], 1),
        "throughput_per_s": round(thr["throughput_per_s"], 2),
        "wall_s": round(thr["wall_s"], 3),
        "submit_to_start_under_load_p50_ms": round(thr["submit_to_start_p50_ms"], 1),
        "submit_to_start_under_load_p99_ms": round(thr["submit_to_start_p99_ms"], 1),
        "probes": probes,
        "submit_to_start_p50_ms": round(lat["submit_to_start_p50_ms"], 1),
        "submit_to_start_p99_ms": round(lat["submit_to_start_p99_ms"], 1),
        "config": "slurmctld+slurmd+munge, SchedulerParameters=batch_sched_delay=0",
    }


def table(res: dict[str, Any]) -> str:
    cn, sl = res["computenet"], res["slurm"]
    rows = [
        ("submit rate (jobs/s)", "submit_rate_per_s"),
        ("end-to-end throughput (jobs/s)", "throughput_per_s"),
        ("submit→start p50, idle (ms)", "submit_to_start_p50_ms"),
        ("submit→start p99, idle (ms)", "submit_to_start_p99_ms"),
        ("submit→start p50, under load (ms)", "submit_to_start_under_load_p50_ms"),
        ("submit→start p99, under load (ms)", "submit_to_start_under_load_p99_ms"),
    ]
    lines = [
        f"# Jobs: computenet vs Slurm ({cn['jobs']} vs "
        f"{sl['jobs'] if isinstance(sl, dict) else 0} trivial jobs)",
        "",
        "| metric | computenet | slurm | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, key in rows:
        a = cn[key]
        b = sl[key] if isinstance(sl, dict) else float("nan")
        lower_better = "ms" in label
        ratio = (b / a if lower_better else a / b) if b and a else float("nan")
        lines.append(f"| {label} | {a} | {b} | {ratio:.1f}x |")
    lines += [
        "",
        f"Machine limit, bare `subprocess.run(['true'])` loop: {res['bare_true_per_s']:.0f}/s; "
        f"computenet reaches {res['fraction_of_machine_limit']:.0%} of it end to end.",
        "Ratios are computenet's advantage (higher is better for computenet).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--slurm-jobs", type=int, default=100)
    ap.add_argument("--slurm-probes", type=int, default=10)
    ap.add_argument("--no-slurm", action="store_true")
    args = ap.parse_args()
    res: dict[str, Any] = {
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    res["bare_true_per_s"] = round(bare_loop(), 1)
    res["computenet"] = asyncio.run(computenet(args.jobs, args.probes))
    res["fraction_of_machine_limit"] = (
        res["computenet"]["throughput_per_s"] / res["bare_true_per_s"]
    )
    res["slurm"] = "skipped" if args.no_slurm else slurm(args.slurm_jobs, args.slurm_probes)
    cn, sl = res["computenet"], res["slurm"]
    if isinstance(sl, dict):
        res["ratios"] = {
            "throughput": round(cn["throughput_per_s"] / sl["throughput_per_s"], 1),
            "submit_rate": round(cn["submit_rate_per_s"] / sl["submit_rate_per_s"], 1),
            "submit_to_start_p50": round(
                sl["submit_to_start_p50_ms"] / cn["submit_to_start_p50_ms"], 1
            ),
        }
    res["targets"] = {
        "throughput_per_s>=300": cn["throughput_per_s"] >= 300,
        "submit_to_start_p50_ms<=20": cn["submit_to_start_p50_ms"] <= 20,
    }
    text = table(res)
    write("jobs", res, text)
    print(text)


if __name__ == "__main__":
    main()
