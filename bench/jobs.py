"""1,000 trivial jobs through the SDK, side by side with a single-node Slurm in the same run.

    python bench/jobs.py [--jobs 1000] [--slurm-jobs 100] [--no-slurm]

Reports submit rate, end-to-end throughput (all complete) and submit→start latency, both
under load and one job at a time on an idle system, plus the machine's own limit (a bare
``subprocess.run(['true'])`` loop); and the last scenario again on an agent without its
job sandbox (``-o sandbox=off``), for what the sandbox costs. Writes bench/results/jobs.json
and jobs.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Deployment, machine, percentile, write
from computenet import AsyncClient
from computenet.model import TERMINAL, Job, JobState

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


def _ended(counts: dict[str, int]) -> int:
    return sum(counts.get(s.value, 0) for s in TERMINAL)


async def throughput(c: AsyncClient, n: int, cpus: float, batch: bool) -> dict[str, Any]:
    spec = {"command": ["true"], "resources": {"cpus": cpus}}
    before = _ended(await c.counts())
    t0 = time.perf_counter()
    if batch:
        ids = [j.id for j in await c.submit_many([spec] * n)]
    else:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one() -> str:
            async with sem:
                return (await c.submit(spec)).id

        ids = await asyncio.gather(*(one() for _ in range(n)))
    submitted = time.perf_counter()
    while _ended(await c.counts()) < before + n:
        await asyncio.sleep(0.02)
    finished = time.perf_counter()
    jobs = [await c.get(i) for i in ids]
    lat = latencies_ms(jobs)
    return {
        "jobs": n,
        "cpus_per_job": cpus,
        "submission": "batch" if batch else f"one request per job, {CONCURRENCY} in flight",
        "failed": sum(j.state is not JobState.COMPLETE for j in jobs),
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


SCENARIOS = {
    "default": (1.0, False),  # what `cnet run -- true` asks for: one CPU, one request
    "small": (0.1, False),  # a tenth of a CPU each, as a trivial job can honestly ask
    "batch": (0.1, True),  # the same, submitted with submit_many
}


async def computenet(n: int, probes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Deployment() as d:
        async with AsyncClient(d.url, d.token, max_connections=CONCURRENCY) as c:
            await latency(c, 10)  # warm up connections and code paths
            out["latency"] = await latency(c, probes)
            for name, (cpus, batch) in SCENARIOS.items():
                out[name] = await throughput(c, n, cpus, batch)
    # The same agent without its job sandbox (bubblewrap and a reaper in each job): what
    # the sandbox costs a trivial job.
    with Deployment(agent_args=["--option", "sandbox=off"]) as d:
        async with AsyncClient(d.url, d.token, max_connections=CONCURRENCY) as c:
            await latency(c, 10)
            out["latency_unboxed"] = await latency(c, probes)
            out["batch_unboxed"] = await throughput(c, n, *SCENARIOS["batch"])
    return out


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
    slurm_ok = isinstance(sl, dict)

    def row(label: str, ours: float, theirs: float | None, lower_better: bool) -> str:
        if theirs is None or not ours:
            return f"| {label} | {ours} | - | - |"
        ratio = theirs / ours if lower_better else ours / theirs
        return f"| {label} | {ours} | {theirs} | {ratio:.1f}x |"

    s = sl if slurm_ok else {}
    lines = [
        f"# Jobs: computenet vs Slurm, trivial jobs (`true`), {res['machine']['cpus']} CPUs",
        "",
        "| metric | computenet | slurm | computenet's advantage |",
        "|---|---:|---:|---:|",
        row(
            "submit→start p50, idle (ms)",
            cn["latency"]["submit_to_start_p50_ms"],
            s.get("submit_to_start_p50_ms"),
            True,
        ),
        row(
            "submit→start p99, idle (ms)",
            cn["latency"]["submit_to_start_p99_ms"],
            s.get("submit_to_start_p99_ms"),
            True,
        ),
    ]
    for name, label in (
        ("default", "1 CPU each"),
        ("small", "0.1 CPU each"),
        ("batch", "0.1 CPU each, submit_many"),
        ("batch_unboxed", "0.1 CPU each, submit_many, no job sandbox"),
    ):
        r = cn[name]
        lines.append(
            row(
                f"submit rate, {label} (jobs/s)",
                r["submit_rate_per_s"],
                s.get("submit_rate_per_s"),
                False,
            )
        )
        lines.append(
            row(
                f"end-to-end throughput, {label} (jobs/s)",
                r["throughput_per_s"],
                s.get("throughput_per_s"),
                False,
            )
        )
    lines.append(
        row(
            "submit→start p50, idle, no job sandbox (ms)",
            cn["latency_unboxed"]["submit_to_start_p50_ms"],
            s.get("submit_to_start_p50_ms"),
            True,
        )
    )
    lines += [
        "",
        "Each job runs in a bubblewrap sandbox by default (docs/jobs.md); the rows marked "
        "'no job sandbox' ran on an agent started with `-o sandbox=off`.",
        "",
        f"computenet ran {cn['default']['jobs']} jobs per scenario; Slurm "
        f"{s.get('jobs', 0)} jobs (1 CPU each, one `sbatch --wrap=true` per job; Slurm cannot "
        "grant a fraction of a CPU) and "
        f"{s.get('probes', 0)} idle probes. Machine limit, a bare `subprocess.run(['true'])` "
        f"loop: {res['bare_true_per_s']:.0f}/s.",
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
    res["slurm"] = "skipped" if args.no_slurm else slurm(args.slurm_jobs, args.slurm_probes)
    cn, sl = res["computenet"], res["slurm"]
    best = max(cn[k]["throughput_per_s"] for k in SCENARIOS)
    if isinstance(sl, dict):
        res["ratios"] = {
            f"throughput_{k}": round(cn[k]["throughput_per_s"] / sl["throughput_per_s"], 1)
            for k in SCENARIOS
        }
        res["ratios"]["submit_to_start_p50"] = round(
            sl["submit_to_start_p50_ms"] / cn["latency"]["submit_to_start_p50_ms"], 1
        )
    res["targets"] = {
        "throughput_per_s>=300 (default)": cn["default"]["throughput_per_s"] >= 300,
        "throughput_per_s>=300 (best scenario)": best >= 300,
        "submit_to_start_p50_ms<=20": cn["latency"]["submit_to_start_p50_ms"] <= 20,
        "throughput_per_s>=300 (submit_many, no job sandbox)": (
            cn["batch_unboxed"]["throughput_per_s"] >= 300
        ),
    }
    text = table(res)
    write("jobs", res, text)
    print(text)
    print(json.dumps(res["targets"], indent=2))


if __name__ == "__main__":
    main()
