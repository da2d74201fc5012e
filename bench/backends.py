"""The same job workload on each engine alone and through computenet, side by side.

    python bench/backends.py [--jobs 200] [--only local,slurm,ray] [--job-seconds 0.3]
                             [--rounds 1] [--slurm-poll 1]

For each backend the benchmark runs the workload twice in the same run, on the same machine
and the same engine instance: once submitted to the engine directly (a subprocess pool,
``sbatch``, Ray's ``JobSubmissionClient``) and once through a computenet node and an agent
fronting that engine (``cnet agent run --backend local|slurm|ray``). It reports the
overhead computenet adds as ``computenet wall / engine wall - 1``; the target is at most
10 %. Writes bench/results/backends.json and backends.md.

The job is a short CPU-bound Python loop that prints its own start and end time, so that
every engine's submit→start latency is measured the same way, to the millisecond, from the
process itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Deployment, machine, percentile, write
from computenet import AsyncClient
from computenet.model import TERMINAL, JobState

if TYPE_CHECKING:
    from bench.peers.slurm import SlurmCluster

BACKENDS = ("local", "slurm", "ray")
TARGET = 0.10  # computenet may add at most 10 % to the engine's wall time
WARMUP = 2  # jobs run through each path before measuring, so first-use costs stay out
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
JOB_CODE = (
    "import time;t=time.time();sum(i*i for i in range({loops}));print('cnet-bench',t,time.time())"
)
STAMP = re.compile(r"cnet-bench (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)")
RAY_START_TIMEOUT = 240.0  # a Ray head on a busy 2-core machine
_MARKERS: list[str] = []  # paths that every process this benchmark starts carries


# --- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One command for every engine: absolute interpreter path, so PATH differences between
    engines (Slurm's login environment, Ray's workers) cannot pick another Python."""

    jobs: int
    loops: int
    cpus: int = 1

    @property
    def argv(self) -> list[str]:
        return [PYTHON, "-c", JOB_CODE.format(loops=self.loops)]

    @property
    def shell(self) -> str:
        return shlex.join(self.argv)

    def timeout(self, slots: int) -> float:
        """Generous: a wedged engine should fail the run, not hang it."""
        return 300.0 + 10.0 * self.jobs / max(1, slots)


def stamps_in(text: str) -> tuple[float, float] | None:
    m = STAMP.search(text)
    return (float(m[1]), float(m[2])) if m else None


def calibrate(seconds: float) -> tuple[int, float]:
    """Size the loop on this machine, so the job runs about ``seconds`` whatever the CPU;
    the fastest of three probes, since other load only ever makes a probe slower."""
    probe = 1_500_000
    best = float("inf")
    for _ in range(3):
        out = subprocess.run(
            Workload(1, probe).argv, capture_output=True, text=True, check=True
        ).stdout
        got = stamps_in(out)
        assert got is not None, out
        best = min(best, got[1] - got[0])
    loops = max(1000, int(probe * seconds / max(best, 1e-6)))
    return loops, round(best * loops / probe, 3)


# --- one measured run -----------------------------------------------------------------------


@dataclass
class Run:
    """What one path did with the workload; wall-clock seconds throughout, since the jobs'
    own stamps are wall-clock too."""

    path: str
    submission: str
    slots: int
    t0: float = 0.0
    submitted: float = 0.0
    finished: float = 0.0
    submits: dict[str, float] = field(default_factory=dict)
    stamps: dict[str, tuple[float, float]] = field(default_factory=dict)
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        n = len(self.submits)
        wall = self.finished - self.t0
        starts = [self.stamps[k][0] - s for k, s in self.submits.items() if k in self.stamps]
        runs = [end - start for start, end in self.stamps.values()]
        last_end = max((end for _, end in self.stamps.values()), default=float("nan"))
        # CPU-slot time not spent running a job, per job: dispatch cost as the slots see it.
        idle = (self.slots * (last_end - self.t0) - sum(runs)) / max(1, len(runs))
        return {
            "path": self.path,
            "submission": self.submission,
            "jobs": n,
            "failed": self.failed,
            "missing_stamps": n - len(starts),
            "wall_s": round(wall, 3),
            "jobs_per_s": round(n / wall, 2) if wall > 0 else None,
            "submit_s": round(self.submitted - self.t0, 3),
            "last_job_end_s": round(last_end - self.t0, 3),
            "submit_to_start_p50_ms": round(percentile(starts, 50) * 1000, 1),
            "submit_to_start_p99_ms": round(percentile(starts, 99) * 1000, 1),
            "job_run_mean_s": round(statistics.fmean(runs), 3) if runs else None,
            "slot_idle_per_job_ms": round(idle * 1000, 1),
            **self.extra,
        }


# --- computenet -----------------------------------------------------------------------------


async def _ended(c: AsyncClient) -> int:
    counts = await c.counts()
    return sum(counts.get(s.value, 0) for s in TERMINAL)


async def _wait_ended(c: AsyncClient, n: int, timeout: float) -> None:
    """A count every 0.1 s: cheap for the node, and fine-grained next to a run of tens of
    seconds; 200 long-polls would cost the node more than they save."""
    deadline = time.monotonic() + timeout
    while await _ended(c) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"computenet: not all {n} jobs ended within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def _job_stamps(c: AsyncClient, job_id: str) -> tuple[float, float] | None:
    """Through the logs API, so the run also shows that every job's output came back."""
    text = "".join([chunk.get("data", "") async for chunk in c.logs(job_id)])
    return stamps_in(text)


async def _computenet(url: str, token: str, pool: str, w: Workload, slots: int) -> Run:
    spec = {"command": w.argv, "resources": {"cpus": w.cpus}, "pool": pool}
    run = Run("computenet", "one submit_many request (AsyncClient)", slots)
    async with AsyncClient(url, token) as c:
        warm = await c.submit_many([spec] * WARMUP)
        await _wait_ended(c, len(warm), w.timeout(slots))
        run.t0 = time.time()
        jobs = await c.submit_many([spec] * w.jobs)
        run.submitted = time.time()
        await _wait_ended(c, len(warm) + w.jobs, w.timeout(slots))
        run.finished = time.time()
        done = [await c.get(j.id) for j in jobs]
        run.submits = {j.id: run.t0 for j in done}
        for j in done:
            got = await _job_stamps(c, j.id)
            if got is not None:
                run.stamps[j.id] = got
    run.failed = sum(j.state is not JobState.COMPLETE for j in done)
    node_lat = [(j.started_at - j.created_at).total_seconds() * 1000 for j in done if j.started_at]
    run.extra["node_recorded_start_p50_ms"] = round(percentile(node_lat, 50), 1)
    # What the node records as run time (it bills from it); compare with job_run_mean_s.
    ran = [(j.ended_at - j.started_at).total_seconds() for j in done if j.started_at and j.ended_at]
    run.extra["node_recorded_run_mean_s"] = round(statistics.fmean(ran), 3) if ran else None
    reasons = sorted({j.reason for j in done if j.state is not JobState.COMPLETE})
    if reasons:
        run.extra["failure_reasons"] = reasons[:5]
    return run


def through_computenet(w: Workload, slots: int, agent_args: Sequence[str] = ()) -> Run:
    """A fresh node and agent per run, started only now, so that the agent's heartbeats and
    polls do not load the engine while the engine runs alone."""
    with Deployment(agent_args=agent_args) as d:
        _MARKERS.append(str(d.home))
        pool = d.pool()
        before = _cpu_seconds(d.procs)
        run = asyncio.run(_computenet(d.url, d.token, pool, w, slots))
        # The machine is shared: what the node and agent (and the engine commands the agent
        # runs) burn is CPU the jobs and the engine's own daemons do not get.
        run.extra["computenet_cpu_s"] = round(_cpu_seconds(d.procs) - before, 1)
        run.extra["pool"] = pool
        run.extra["agent"] = " ".join(["cnet agent run", *agent_args])
    shutil.rmtree(d.home, ignore_errors=True)
    return run


def _cpu_seconds(procs: Sequence[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


# --- local: a subprocess pool ---------------------------------------------------------------


def local_engine(w: Workload, slots: int) -> Run:
    """What a user without computenet would write: a pool of ``slots`` workers, one
    subprocess each, all jobs handed over at once."""

    def one(i: int) -> tuple[int, int, str]:
        p = subprocess.run(w.argv, capture_output=True, text=True, check=False)
        return i, p.returncode, p.stdout

    run = Run("engine", f"ThreadPoolExecutor({slots}) running subprocess.run per job", slots)
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(one, range(WARMUP)))
        run.t0 = time.time()
        futures = [pool.submit(one, i) for i in range(w.jobs)]
        run.submitted = time.time()
        results = [f.result() for f in futures]
        run.finished = time.time()
    for i, code, out in results:
        run.submits[str(i)] = run.t0
        run.failed += code != 0
        got = stamps_in(out)
        if got is not None:
            run.stamps[str(i)] = got
    return run


# --- Slurm ----------------------------------------------------------------------------------


def slurm_engine(cluster: SlurmCluster, w: Workload) -> Run:
    """One ``sbatch --wrap`` per job, back to back, as computenet's agent submits them (not
    a job array, which computenet never uses); completion from Slurm's jobcomp file."""
    out = cluster.jobs_dir / "direct"
    out.mkdir(parents=True, exist_ok=True)

    def submit() -> int:
        return int(
            cluster.sbatch(
                f"--wrap={w.shell}",
                f"--cpus-per-task={w.cpus}",
                f"--output={out}/%j.out",
                "--job-name=cnet-bench",
            )
        )

    cluster.wait_jobs([submit() for _ in range(WARMUP)], w.timeout(cluster.cpus))
    run = Run("engine", "one sbatch --wrap per job, back to back", cluster.cpus)
    run.t0 = time.time()
    for _ in range(w.jobs):
        stamp = time.time()
        run.submits[str(submit())] = stamp
    run.submitted = time.time()
    records = cluster.wait_jobs([int(k) for k in run.submits], w.timeout(cluster.cpus))
    run.finished = time.time()
    run.failed = sum(r.state != "COMPLETED" for r in records.values())
    for key in run.submits:
        with contextlib.suppress(OSError):
            got = stamps_in((out / f"{key}.out").read_text())
            if got is not None:
                run.stamps[key] = got
    return run


def slurm_agent_args(cluster: SlurmCluster, poll: float, queue: float = 2.0) -> list[str]:
    return [
        "--backend",
        "slurm",
        "--partition",
        cluster.partition,
        "-o",
        f"conf={cluster.conf_path}",
        "-o",
        f"poll={poll:g}",
        "-o",
        f"queue={queue:g}",
    ]


# --- Ray ------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """All held open until all are chosen, so that the kernel cannot hand one out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class RayHead:
    """A single-machine head the way an operator starts one (``ray start --head``), bound to
    127.0.0.1 on free ports. Stopped through its own process and session, never with
    ``ray stop``, which would take down every other Ray on this shared machine."""

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus
        self.temp_dir = tempfile.mkdtemp(prefix="cnb-ray-", dir="/tmp")  # short socket paths
        self.log = Path(self.temp_dir) / "head.log"
        self.url = ""
        self.popen: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RayHead:
        _MARKERS.append(self.temp_dir)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        p = _free_ports(11)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CNET_", "RAY_"))}
        env.update(
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # single node: everything on 127.0.0.1
            RAY_AUTH_MODE="disabled",  # loopback only
            DASHBOARD_METRIC_PORT=str(p[9]),
            AUTOSCALER_METRIC_PORT=str(p[10]),
        )
        ports = zip(
            (
                "dashboard-port",
                "port",
                "node-manager-port",
                "object-manager-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "ray-client-server-port",
            ),
            p[:9],
            strict=True,
        )
        args = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.cpus}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *(f"--{name}={port}" for name, port in ports),
        ]
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{p[0]}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + RAY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"ray start exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                r = httpx.get(f"{self.url}/api/v0/nodes", timeout=5)
                if any(n["state"] == "ALIVE" for n in r.json()["data"]["result"]["result"]):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not start:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.popen is not None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(30)
            _kill_session(self.popen.pid, grace=10.0)
            self.popen.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_session(sid: int, grace: float) -> None:
    """``ray start --block`` takes Ray down in order on SIGTERM; whatever is still in its
    session after ``grace`` is killed, so nothing of this head outlives the benchmark."""
    deadline = time.monotonic() + grace
    while (left := _session(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(p.pid) == sid:
                out.append(p)
    return out


def _ray_wait(client: Any, sids: set[str], timeout: float) -> dict[str, Any]:
    """One ``list_jobs`` per 0.25 s, as a user's script would poll; faster would load the
    dashboard that is running the very jobs being measured."""
    deadline = time.monotonic() + timeout
    while True:
        mine = {d.submission_id: d for d in client.list_jobs() if d.submission_id in sids}
        if len(mine) == len(sids) and all(d.status.is_terminal() for d in mine.values()):
            return mine
        if time.monotonic() > deadline:
            raise TimeoutError(f"ray: not all {len(sids)} jobs ended within {timeout:.0f}s")
        time.sleep(0.25)


def ray_engine(head: RayHead, w: Workload) -> Run:
    """One ``submit_job`` per job, back to back, with the same entrypoint and
    ``entrypoint_num_cpus`` that the agent uses; the jobs are deleted afterwards so that the
    agent's ``list_jobs`` polls later see only its own jobs."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.url)

    def submit(sid: str) -> str:
        return str(
            client.submit_job(entrypoint=w.shell, submission_id=sid, entrypoint_num_cpus=w.cpus)
        )

    tag = os.urandom(3).hex()  # ids stay unique across rounds on the same head
    warm = {submit(f"bench-{tag}-warm-{i}") for i in range(WARMUP)}
    _ray_wait(client, warm, w.timeout(head.cpus))
    run = Run("engine", "one JobSubmissionClient.submit_job per job, back to back", head.cpus)
    run.t0 = time.time()
    for i in range(w.jobs):
        stamp = time.time()
        run.submits[submit(f"bench-{tag}-{i}")] = stamp
    run.submitted = time.time()
    details = _ray_wait(client, set(run.submits), w.timeout(head.cpus))
    run.finished = time.time()
    run.failed = sum(d.status.value != "SUCCEEDED" for d in details.values())
    ends = [d.end_time / 1000 for d in details.values() if d.end_time]
    run.extra["ray_recorded_last_end_s"] = round(max(ends) - run.t0, 3) if ends else None
    for sid in run.submits:
        got = stamps_in(client.get_job_logs(sid))
        if got is not None:
            run.stamps[sid] = got
    for sid in warm | set(run.submits):
        with contextlib.suppress(Exception):
            client.delete_job(sid)
    return run


def ray_missing() -> str | None:
    """Say why the Ray part cannot run, so that the other backends still report."""
    try:
        import ray  # noqa: F401
        from ray.job_submission import JobSubmissionClient  # noqa: F401

        from computenet.agent.backends import ray as backend  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


# --- comparing the two paths ----------------------------------------------------------------


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def at_equal_run_time(e: dict[str, Any], c: dict[str, Any]) -> float:
    """Overhead as if the jobs had run equally fast on both paths: one job's slot cycle is
    its run time plus the slot's idle time around it. Other users' load on a shared machine
    mostly stretches the jobs themselves, which this takes out; CPU that computenet's own
    processes take from the jobs is taken out too, so this is a floor, not the verdict."""
    run = (e["job_run_mean_s"] + c["job_run_mean_s"]) / 2
    cycle_e = run + e["slot_idle_per_job_ms"] / 1000
    cycle_c = run + c["slot_idle_per_job_ms"] / 1000
    return round((cycle_c / cycle_e - 1) * 100, 1)


def compare(
    engine: Callable[[], Run], computenet: Callable[[], Run], rounds: int
) -> dict[str, Any]:
    """Alternate which path goes first from round to round, so that a drift in the
    machine's other load does not always fall on the same side."""
    results = []
    for r in range(rounds):
        order = (engine, computenet) if r % 2 == 0 else (computenet, engine)
        load_before = _load()
        runs = {run.path: run.summary() for run in (f() for f in order)}
        e, c = runs["engine"], runs["computenet"]
        results.append(
            {
                "engine": e,
                "computenet": c,
                "overhead_pct": round((c["wall_s"] / e["wall_s"] - 1) * 100, 1),
                "overhead_at_equal_run_time_pct": at_equal_run_time(e, c),
                "load_before": load_before,
                "load_after": _load(),
            }
        )
    overhead = statistics.median(r["overhead_pct"] for r in results)
    return {
        "rounds": results,
        "overhead_pct": overhead,
        "overhead_at_equal_run_time_pct": statistics.median(
            r["overhead_at_equal_run_time_pct"] for r in results
        ),
        "target_met": overhead <= TARGET * 100,
    }


def bench_local(w: Workload, rounds: int, slots: int) -> dict[str, Any]:
    out = compare(lambda: local_engine(w, slots), lambda: through_computenet(w, slots), rounds)
    out["engine"] = f"subprocess pool of {slots} (os.cpu_count())"
    return out


def bench_slurm(w: Workload, rounds: int, poll: float, queue: float) -> dict[str, Any] | str:
    from bench.peers import slurm as peer

    why = peer.available()
    if why is not None:
        return f"Slurm not available: {why}"
    with peer.SlurmCluster(tuned=True) as cluster:
        _MARKERS.append(str(cluster.workdir))
        out = compare(
            lambda: slurm_engine(cluster, w),
            lambda: through_computenet(w, cluster.cpus, slurm_agent_args(cluster, poll, queue)),
            rounds,
        )
        out["engine"] = (
            f"single-node Slurm, {cluster.cpus} CPUs (slurmctld+slurmd+munge, "
            "batch_sched_delay=0, sched_min_interval=0)"
        )
    return out


def bench_ray(w: Workload, rounds: int, cpus: int) -> dict[str, Any] | str:
    why = ray_missing()
    if why is not None:
        return f"Ray not available: {why}"
    with RayHead(cpus) as head:
        out = compare(
            lambda: ray_engine(head, w),
            lambda: through_computenet(w, cpus, ["--backend", "ray", "--ray-address", head.url]),
            rounds,
        )
        out["engine"] = (
            f"ray start --head --num-cpus={cpus} on 127.0.0.1; the agent joins this same "
            "head with --ray-address"
        )
    return out


BENCHES: dict[str, Callable[[Workload, argparse.Namespace, int], dict[str, Any] | str]] = {
    "local": lambda w, a, cpus: bench_local(w, a.rounds, cpus),
    "slurm": lambda w, a, cpus: bench_slurm(w, a.rounds, a.slurm_poll, a.slurm_queue),
    "ray": lambda w, a, cpus: bench_ray(w, a.rounds, cpus),
}


def run_backend(name: str, w: Workload, args: argparse.Namespace) -> dict[str, Any] | str:
    """A failing backend is reported with its reason and the others still run."""
    cpus = os.cpu_count() or 1
    print(f"[{time.strftime('%H:%M:%S')}] {name}: load {_load()}", flush=True)
    try:
        return BENCHES[name](w, args, cpus)
    except Exception as e:
        return f"{name} failed: {type(e).__name__}: {e}"


# --- cleanliness ----------------------------------------------------------------------------


def leftovers(markers: Sequence[str], settle: float = 10.0) -> list[str]:
    """Processes of ours still alive: any whose command line or working directory names a
    directory this run created. Exited processes may take a moment to be reaped."""
    deadline = time.monotonic() + settle
    while True:
        found = _matching(markers)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _matching(markers: Sequence[str]) -> list[str]:
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["name", "cmdline", "cwd", "status"]):
        if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        cwd = p.info["cwd"] or ""
        if any(m in cmd or cwd.startswith(m) for m in markers):
            found.append(f"{p.pid} {p.info['name']}")
    return found


# --- report ---------------------------------------------------------------------------------


def _median(res: dict[str, Any], path: str, key: str) -> float:
    return float(statistics.median(r[path][key] for r in res["rounds"]))


def _cells(name: str, res: dict[str, Any] | str) -> str:
    if isinstance(res, str):
        return f"| {name} | {res} |" + " |" * 10

    def pair(key: str, scale: float, fmt: str) -> str:
        e, c = (_median(res, p, key) * scale for p in ("engine", "computenet"))
        return f"{e:{fmt}} / {c:{fmt}}"

    ok = "yes" if res["target_met"] else "**no**"
    return (
        f"| {name} | {_median(res, 'engine', 'wall_s'):.1f} "
        f"| {_median(res, 'computenet', 'wall_s'):.1f} | {res['overhead_pct']:+.1f} % "
        f"| {ok} | {pair('jobs_per_s', 1, '.2f')} "
        f"| {pair('submit_to_start_p50_ms', 0.001, '.1f')} "
        f"| {pair('job_run_mean_s', 1, '.2f')} | {pair('slot_idle_per_job_ms', 1, '.0f')} "
        f"| {res['overhead_at_equal_run_time_pct']:+.1f} % "
        f"| {_median(res, 'computenet', 'computenet_cpu_s'):.1f} |"
    )


def table(res: dict[str, Any]) -> str:
    w = res["workload"]
    cpus = res["machine"]["cpus"]
    lines = [
        f"# Backends: {w['jobs']} jobs, engine alone vs through computenet, {cpus} CPUs",
        "",
        "| backend | engine wall (s) | computenet wall (s) | overhead | ≤ 10 %? "
        "| jobs/s (engine / computenet) | submit→start p50, s (e / c) "
        "| job run mean, s (e / c) | slot idle per job, ms (e / c) "
        "| overhead at equal job run time | computenet CPU, s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *(_cells(name, r) for name, r in res["backends"].items()),
        "",
        f"Command: `{res['command']}`. Each job: `python3 -c` summing squares, "
        f"about {w['job_seconds']} s of one CPU ({w['loops']} iterations), `cpus: 1`. "
        "computenet: all jobs in one `submit_many` request, pinned to the backend's pool, "
        "a fresh node and agent per run. Engines alone: the local engine is a subprocess "
        f"pool of {cpus}; Slurm gets one `sbatch --wrap` per job (not an array); Ray one "
        "`submit_job` per job with `entrypoint_num_cpus=1`; each on the same cluster "
        "instance as its computenet run. Wall time runs from the first submission until "
        "all jobs are seen complete; overhead = computenet wall / engine wall - 1 (median "
        f"of {res['rounds']} round(s)). Submit→start is each job's submission to its "
        "process's own start stamp, mostly queueing here. Slot idle per job = (CPU slots x "
        "time to the last job's end - the jobs' run time) / jobs: what each job costs in "
        "dispatch. The last column recomputes the overhead with both paths' jobs running "
        "equally fast, which removes other users' load on the jobs (and also the CPU that "
        "computenet's own processes take). computenet CPU: what the node and agent, and the "
        f"engine commands the agent ran, used during the run. Slurm agent: `-o poll={res['slurm_agent_poll_s']:g} -o queue={res['slurm_agent_queue']:g}`. "
        f"Load average (1, 5, 15 min) at start {res['load_start']}, at end "
        f"{res['load_end']}: the 2-core machine is shared, so the numbers are noisy.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--only", default=",".join(BACKENDS), help="e.g. local,slurm,ray")
    ap.add_argument("--job-seconds", type=float, default=0.3, help="CPU time of one job")
    ap.add_argument("--rounds", type=int, default=1, help="engine/computenet pairs per backend")
    ap.add_argument("--slurm-poll", type=float, default=1.0, help="the agent's squeue interval")
    ap.add_argument(
        "--slurm-queue", type=float, default=2.0, help="the agent's queue option (its default: 2)"
    )
    args = ap.parse_args()
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BACKENDS)
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {BACKENDS}")
    loops, seconds = calibrate(args.job_seconds)
    w = Workload(args.jobs, loops)
    res: dict[str, Any] = {
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "load_start": _load(),
        "workload": {
            "jobs": w.jobs,
            "command": w.argv,
            "loops": loops,
            "job_seconds": seconds,
            "cpus_per_job": w.cpus,
            "warmup_jobs_per_path": WARMUP,
        },
        "rounds": args.rounds,
        "target_overhead_pct": TARGET * 100,
        "slurm_agent_poll_s": args.slurm_poll,
        "slurm_agent_queue": args.slurm_queue,
        "backends": {name: run_backend(name, w, args) for name in only},
    }
    res["load_end"] = _load()
    res["leftover_processes"] = leftovers(_MARKERS)
    text = table(res)
    write("backends", res, text)
    print(text)
    if res["leftover_processes"]:
        print("left behind:", json.dumps(res["leftover_processes"]))


if __name__ == "__main__":
    main()
