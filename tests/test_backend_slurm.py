"""The Slurm backend end to end: a real single-node Slurm (munge, slurmctld, slurmd from
bench/peers/slurm.py), a real node, and a real agent process fronting the cluster, driven
through the CLI and the SDK. The parsers get a few direct checks at the end, on Slurm's own
output formats, for what one small cluster cannot show (GPUs, node failures)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from bench.peers.slurm import SlurmCluster

from computenet.agent.backends.base import Task
from computenet.agent.backends.slurm import (
    End,
    batch_script,
    gpu_devices,
    machines_from,
    parse_queue,
    parse_records,
    sbatch_args,
    split_status,
    verdict,
)
from computenet.model import DeviceKind, JobSpec, JobState
from conftest import DATABASES, Network, _network, slurm_cluster

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

# More CPUs than this machine has: a pool that shows them can only have asked Slurm.
SLURM_CPUS = max(3, (os.cpu_count() or 1) + 1)
POOL = "slurm"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    yield from slurm_cluster(SLURM_CPUS)


def agent_args(cluster: SlurmCluster) -> list[str]:
    return [
        "--backend",
        "slurm",
        "--partition",
        cluster.partition,
        "-o",
        f"conf={cluster.conf_path}",
        "-o",
        "poll=0.3",
    ]


@pytest.fixture(scope="module", params=DATABASES)
def net(
    request: pytest.FixtureRequest,
    cluster: SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Network]:
    """A node and one agent fronting the Slurm cluster, shared by the tests (per database)."""
    tmp = tmp_path_factory.mktemp(f"slurm-{request.param}")
    for network in _network(request.param, tmp, request):
        network.start_agent(POOL, *agent_args(cluster))
        yield network


@pytest.fixture
def cpi(net: Network) -> str:
    return net.wait_pool(POOL)


def run(net: Network, cpi: str, *args: str) -> subprocess.CompletedProcess[str]:
    return net.cnet("run", "--pool", cpi, *args)


def squeue(cluster: SlurmCluster, *args: str) -> str:
    return subprocess.run(
        ["squeue", "--noheader", "--states=all", *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def slurm_job(cluster: SlurmCluster, job_id: str, attempt: int = 1) -> tuple[str, str]:
    """(Slurm id, state) of the Slurm job whose comment names this attempt."""
    wanted = f"cnet:{job_id}#{attempt}"
    for line in squeue(cluster, "--Format=JobID:|,State:|,Comment:|").splitlines():
        slurm_id, state, comment = line.split("|")[:3]
        if comment == wanted:
            return slurm_id, state
    raise AssertionError(f"no Slurm job with comment {wanted}")


def slurm_state(cluster: SlurmCluster, job_id: str) -> str:
    try:
        return slurm_job(cluster, job_id)[1]
    except AssertionError:
        return ""


@pytest.fixture
def blocker(cluster: SlurmCluster) -> Iterator[int]:
    """Someone else's job holding every CPU of the cluster, as on any busy Slurm."""
    slurm_id = cluster.sbatch(
        f"--cpus-per-task={SLURM_CPUS}", "--output=/dev/null", "--wrap=sleep 120"
    )
    try:
        wait_for(
            "the blocker to run",
            lambda: squeue(cluster, f"--jobs={slurm_id}", "--format=%T").strip() == "RUNNING",
        )
        yield slurm_id
    finally:
        scancel(cluster, slurm_id)


def scancel(cluster: SlurmCluster, slurm_id: int) -> None:
    subprocess.run(["scancel", str(slurm_id)], env=cluster.env(), check=True, timeout=30)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_state(net: Network, job_id: str, state: JobState, timeout: float = 30) -> None:
    with net.client() as c:
        wait_for(f"{job_id} to be {state.value}", lambda: c.get(job_id).state is state, timeout)


def procs_with(marker: str) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ]


# --- running work through Slurm -------------------------------------------------------------


def test_run_prints_output_and_exits_zero(net: Network, cpi: str) -> None:
    r = run(net, cpi, "--", "python3", "-c", "print(6*7)")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "42\n"


def test_exit_code_comes_back(net: Network, cpi: str) -> None:
    r = run(net, cpi, "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    assert "exit code 3" in r.stderr


def test_stdout_and_stderr_stay_apart(net: Network, cpi: str) -> None:
    r = run(net, cpi, "--", "sh", "-c", "echo out; echo err >&2")
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("out\n", "err\n")


def test_argv_and_env_arrive_exactly(net: Network, cpi: str) -> None:
    value = "a,b c'd\"e $HOME\nline2"
    r = run(
        net,
        cpi,
        "-e",
        f"ODD={value}",
        "--",
        "python3",
        "-c",
        "import os, sys; print(sys.argv[1:]); print(repr(os.environ['ODD']));"
        "print(os.environ.get('CNET_TOKEN', 'none'), os.environ['CNET_JOB_ID'][:2],"
        " os.environ['CNET_DEVICES'])",
        "two words",
        "$HOME",
        "it's",
        "",
        "*",
    )
    assert r.returncode == 0, r.stderr
    argv, odd, rest = r.stdout.splitlines()
    assert argv == repr(["two words", "$HOME", "it's", "", "*"])
    assert odd == repr(value)
    assert rest == "none j- []"  # CNET_DEVICES as on every backend


def test_missing_program_is_127_with_reason(net: Network, cpi: str) -> None:
    r = run(net, cpi, "--", "no-such-program-here")
    assert r.returncode == 127
    assert "command not found: no-such-program-here" in r.stderr


def test_logs_follow_while_the_job_runs(net: Network, cpi: str) -> None:
    with net.client() as c:
        job = c.submit(
            command=["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.4; done"], pool=cpi
        )
        seen: list[tuple[float, str]] = []
        for chunk in c.logs(job.id, follow=True):
            seen.append((time.monotonic(), chunk["data"]))
        assert "".join(text for _, text in seen) == "line1\nline2\nline3\n"
        assert seen[-1][0] - seen[0][0] > 0.3, "output should arrive while the job runs"
        assert c.get(job.id).state is JobState.COMPLETE


def test_time_limit_kills_the_job_and_says_why(
    net: Network, cpi: str, cluster: SlurmCluster
) -> None:
    marker = "sleep 171"
    start = time.monotonic()
    r = run(net, cpi, "--time", "2s", "--", "sh", "-c", f"{marker} & {marker}; echo never")
    assert time.monotonic() - start < 20
    assert r.returncode != 0
    assert "never" not in r.stdout
    assert "time limit of 2s exceeded" in r.stderr
    with net.client() as c:
        job = c.list(limit=1).items[0]
    assert job.state is JobState.FAILED
    assert job.reason == "time limit of 2s exceeded"
    assert job.started_at is not None and job.ended_at is not None
    assert 2 <= (job.ended_at - job.started_at).total_seconds() < 8
    assert slurm_job(cluster, job.id)[1] == "CANCELLED"
    wait_for("the job's processes to end", lambda: not procs_with(marker), 15)


def test_cancel_stops_the_slurm_job(net: Network, cpi: str, cluster: SlurmCluster) -> None:
    marker = "sleep 173"
    r = run(net, cpi, "-d", "--", "sh", "-c", f"{marker} & {marker} & wait")
    job_id = r.stdout.strip()
    wait_state(net, job_id, JobState.RUNNING)
    wait_for("the job's processes", lambda: len(procs_with(marker)) >= 2, 15)
    r = net.cnet("cancel", job_id)
    assert r.returncode == 0, r.stderr
    assert "CANCELED" in r.stdout
    with net.client() as c:
        assert c.get(job_id).state is JobState.CANCELED
        assert c.get(job_id).reason == "canceled by the user"
    wait_for("Slurm to end the job", lambda: slurm_job(cluster, job_id)[1] == "CANCELLED", 15)
    wait_for("the job's processes to end", lambda: not procs_with(marker), 15)


def test_slurm_job_carries_the_attempt_and_feeds_telemetry(
    net: Network, cpi: str, cluster: SlurmCluster
) -> None:
    with net.client() as c:
        job = c.submit(command=["sleep", "30"], pool=cpi, resources={"cpus": 1.5})
        try:
            wait_state(net, job.id, JobState.RUNNING)
            slurm_id, state = slurm_job(cluster, job.id)
            assert state == "RUNNING"
            fields = squeue(cluster, f"--jobs={slurm_id}", "--Format=Name:|,NumCPUs:|")
            assert fields.strip() == f"cnet-{job.id}|2|"  # 1.5 CPUs: Slurm counts whole ones

            def busy() -> bool:
                t = next(p for p in c.pools() if p.cpi == cpi).telemetry or {}
                return float(str(t.get("cpu_percent", 0))) > 0 and t.get("running_jobs") == 1

            wait_for("telemetry to show the allocation", busy, 15)
        finally:
            c.cancel(job.id)


def test_pool_shows_the_clusters_cpus(net: Network, cpi: str) -> None:
    with net.client() as c:
        pool = next(p for p in c.pools() if p.cpi == cpi)
    assert pool.backend == "slurm"
    assert pool.capacity.cpus == SLURM_CPUS
    assert [m.cpus for m in pool.machines] == [SLURM_CPUS]
    assert pool.machines[0].memory_bytes > 0
    r = net.cnet("resources")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if cpi in line)
    assert "slurm" in row and f"/{SLURM_CPUS}" in row


def test_job_larger_than_the_cluster_is_refused_at_submit(net: Network, cpi: str) -> None:
    r = run(net, cpi, "--cpus", str(SLURM_CPUS + 1), "--", "true")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert str(SLURM_CPUS + 1) in r.stderr or "cpus" in r.stderr.lower()
    r = run(net, cpi, "--cpus", str(SLURM_CPUS), "--", "echo", "fits")
    assert (r.returncode, r.stdout) == (0, "fits\n"), r.stderr


def test_job_waiting_in_slurms_queue_is_not_yet_running(
    net: Network, cpi: str, cluster: SlurmCluster, blocker: int
) -> None:
    with net.client() as c:
        job = c.submit(command=["echo", "my turn"], pool=cpi)
        wait_for("Slurm to queue the job", lambda: slurm_state(cluster, job.id) == "PENDING")
        time.sleep(1)  # a few polls: the agent must not call a queued job running
        assert c.get(job.id).state is JobState.SCHEDULED

        def queue_seen() -> bool:  # the engine's queue reaches discovery through heartbeats
            s = next(p for p in c.discover(include_all=True).items if p.cpi == cpi)
            tele = c.pool(cpi).telemetry or {}
            # a sample from before the blocker started also shows one job queued (the blocker)
            return s.queued_jobs == 1 and tele.get("free_cpus") == 0

        wait_for("the heartbeat to carry Slurm's queue and a full partition", queue_seen, 15)
        released = time.time()
        scancel(cluster, blocker)
        final = c.wait(job.id, timeout=30)
        assert final.state is JobState.COMPLETE, final.reason
        assert final.started_at is not None and final.started_at.timestamp() >= released
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "my turn\n"


def test_unknown_partition_stops_the_agent_with_slurms_answer(
    net: Network, cluster: SlurmCluster
) -> None:
    args = agent_args(cluster)
    args[args.index("--partition") + 1] = "nope"
    agent = net.start_agent("slurm-typo", *args, wait=False)
    assert agent.popen is not None
    assert agent.popen.wait(60) != 0
    assert "Slurm has no partition 'nope'; it has: debug" in agent.output()


# --- restarts ---------------------------------------------------------------------------


def test_agent_dying_while_slurm_queues_the_job_leaves_no_orphan(
    net: Network, cpi: str, cluster: SlurmCluster, blocker: int
) -> None:
    with net.client() as c:
        job = c.submit(command=["echo", "never"], pool=cpi)
        wait_for("Slurm to queue the job", lambda: slurm_state(cluster, job.id) == "PENDING")
        net.agents[POOL].kill()
        net.start_agent(POOL, *agent_args(cluster))
        wait_state(net, job.id, JobState.FAILED)
        assert "agent restarted" in c.get(job.id).reason
    wait_for("Slurm to cancel the job", lambda: slurm_state(cluster, job.id) == "CANCELLED")


def test_restarted_agent_adopts_the_running_slurm_job(
    net: Network, cpi: str, cluster: SlurmCluster
) -> None:
    with net.client() as c:
        job = c.submit(
            command=["sh", "-c", "sleep 5; echo adopted; mkdir out; echo 42 > out/answer"],
            pool=cpi,
            outputs=[{"path": "out", "uri": "cnet://dataset/adopted-out"}],
        )
        wait_state(net, job.id, JobState.RUNNING)
        slurm_id, _ = slurm_job(cluster, job.id)
        net.agents[POOL].kill()  # no goodbye: the job is Slurm's, and must not notice
        assert slurm_job(cluster, job.id) == (slurm_id, "RUNNING")
        net.start_agent(POOL, *agent_args(cluster))
        final = c.wait(job.id, timeout=60)
        assert final.state is JobState.COMPLETE, final.reason
        assert final.exit_code == 0
        assert [a.number for a in final.attempts] == [1]
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "adopted\n"
        out = c.dataset("adopted-out").versions[0]  # uploaded by the agent that adopted it
        assert out.files == 1 and [r.pool for r in out.replicas] == [cpi]
    assert slurm_job(cluster, job.id) == (slurm_id, "COMPLETED")
    assert f"re-attached to {job.id}#1" in net.agents[POOL].output()


def test_agent_stopped_cleanly_leaves_the_slurm_job_to_its_successor(
    net: Network, cpi: str, cluster: SlurmCluster
) -> None:
    with net.client() as c:
        job = c.submit(command=["sh", "-c", "sleep 4; echo kept"], pool=cpi)
        wait_state(net, job.id, JobState.RUNNING)
        try:
            assert net.agents[POOL].stop() == 0
            assert slurm_job(cluster, job.id)[1] == "RUNNING"
        finally:
            net.start_agent(POOL, *agent_args(cluster))
        final = c.wait(job.id, timeout=60)
        assert final.state is JobState.COMPLETE, final.reason
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "kept\n"


# --- Slurm's formats, read directly -----------------------------------------------------


def _task(tmp_path: Path, **resources: object) -> Task:
    spec = JobSpec(command=["echo", "a b", "it's"], resources=resources)
    return Task("j-abc", 2, "t", spec, [], tmp_path, env={"PATH": "/bin", "V": "x y"})


def test_resources_translate_to_sbatch_options(tmp_path: Path) -> None:
    task = _task(tmp_path, cpus=1.5, memory="1536M", gpus=2, time="61s")
    args = sbatch_args(task, "gpu")
    for expected in (
        "--cpus-per-task=2",
        "--mem=1536M",
        "--gres=gpu:2",
        "--time=2",
        "--partition=gpu",
        "--comment=cnet:j-abc#2",
        "--export=ALL",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/stdout",
        f"--error={tmp_path}/stderr",
    ):
        assert expected in args
    plain = sbatch_args(_task(tmp_path))
    assert not [a for a in plain if a.startswith(("--mem", "--gres", "--time", "--partition"))]
    assert "--export=NONE" in sbatch_args(_task(tmp_path), login_env=True)


def test_batch_script_execs_the_exact_argv(tmp_path: Path) -> None:
    script = batch_script(_task(tmp_path))
    assert "export V='x y'" in script
    assert script.rstrip().endswith("exec echo 'a b' 'it'\"'\"'s'")


def test_node_records_become_machines_with_gpus() -> None:
    text = (
        "NodeName=GPU_Node01 Arch=aarch64 CoresPerSocket=8 CPUAlloc=4 CPUTot=64 CPULoad=3.5 "
        "Gres=gpu:a100:4(S:0-1),mps:100 NodeHostName=gpu01 OS=Linux 6.1.0 #1 SMP "
        "RealMemory=515000 AllocMem=0 FreeMem=400000 Partitions=gpu,all State=MIXED "
        "TmpDisk=1000 CfgTRES=cpu=64,mem=515000M,billing=64\n"
        "NodeName=cpu02 Arch=x86_64 CPUTot=32 Gres=(null) RealMemory=1000 Partitions=all\n"
    )
    nodes = parse_records(text)
    assert nodes[0]["OS"] == "Linux 6.1.0 #1 SMP"
    assert nodes[0]["CfgTRES"] == "cpu=64,mem=515000M,billing=64"
    gpu, cpu = machines_from(nodes)
    assert (gpu.name, gpu.hostname, gpu.cpus, gpu.arch) == ("gpu_node01", "gpu01", 64, "aarch64")
    assert gpu.memory_bytes == 515000 * 2**20
    gpus = [d for d in gpu.devices if d.kind is DeviceKind.gpu]
    assert [(d.name, d.index, d.vendor, d.model) for d in gpus] == [
        (f"gpu{i}", i, "nvidia", "a100") for i in range(4)
    ]
    assert [d.kind for d in cpu.devices] == [DeviceKind.cpu]
    assert [d.index for d in gpu_devices("gpu:2,gpu:mi250:1", 4)] == [4, 5, 6]
    assert gpu_devices("gpu:mi250:1")[0].vendor == "amd"


def test_final_states_map_to_the_agents_terms() -> None:
    def end(state: str, status: int = 0) -> End:
        code, sig = split_status(status)
        return End(state, code, sig, 1.0, 2.0, 3.0)

    assert verdict(end("COMPLETED"), None, "", None, "") == (JobState.COMPLETE, "")
    assert verdict(end("FAILED", 3 << 8), None, "", None, "") == (JobState.FAILED, "exit code 3")
    assert verdict(end("FAILED", 9), None, "", None, "") == (JobState.FAILED, "killed by SIGKILL")
    assert split_status(9) == (137, 9)
    timeout = (JobState.FAILED, "time limit of 90s exceeded")
    assert verdict(end("TIMEOUT", 15), None, "", 90, "") == timeout
    stopped = (JobState.FAILED, "time limit of 2s exceeded")
    assert verdict(end("CANCELLED", 15), *stopped, 2, "") == stopped
    assert verdict(end("CANCELLED", 15), None, "", None, "")[0] is JobState.CANCELED
    assert verdict(end("OUT_OF_MEMORY"), None, "", None, "")[1] == "out of memory"
    assert verdict(end("NODE_FAIL"), None, "", None, "")[0] is JobState.FAILED
    rows = parse_queue("7|FAILED|768|100|101|NonZeroExitCode|cnet:j-x#1|a|b|\n")
    assert rows["7"].comment == "cnet:j-x#1|a|b" and split_status(rows["7"].status) == (3, 0)


def test_slurm_queues_more_than_it_runs(net: Network, cpi: str, cluster: SlurmCluster) -> None:
    """The pool accepts work beyond its size into Slurm's own queue (``queue`` option), so
    Slurm starts the next job on its own tick instead of waiting for the node."""
    n = SLURM_CPUS * 3
    with net.client() as c:
        jobs = c.submit_many(
            [{"command": ["sleep", "1.5"], "resources": {"cpus": 1}, "pool": cpi}] * n
        )
        most = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            lines = squeue(cluster, "--Format=JobID:|,State:|,Comment:|").splitlines()
            most = max(most, sum("cnet:" in line for line in lines))
            if all(c.get(j.id).state.terminal for j in jobs):
                break
            time.sleep(0.2)
        assert most > SLURM_CPUS, f"Slurm never held more than {most} of our jobs: " + "; ".join(
            f"{j.state.value} {j.reason}" for j in (c.get(j.id) for j in jobs[:4])
        )
        assert all(c.get(j.id).state is JobState.COMPLETE for j in jobs)
        pool = next(p for p in c.pools() if p.cpi == cpi)
        assert pool.allocated.cpus == 0  # everything released again


def test_a_time_limit_over_the_partitions_is_said_as_such(
    net: Network, cpi: str, cluster: SlurmCluster
) -> None:
    """slurmctld first says PartitionConfig of such a job: failed on that reading, the
    user never learned it was their --time."""

    def scontrol(*args: str) -> None:
        subprocess.run(
            ["scontrol", "update", f"PartitionName={cluster.partition}", *args],
            env=cluster.env(), capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip

    scontrol("MaxTime=1")
    try:
        r = run(net, cpi, "--time", "5m", "--", "echo", "hi")
    finally:
        scontrol("MaxTime=INFINITE")  # as bench/peers/slurm.py writes it
    assert r.returncode != 0 and "hi" not in r.stdout
    assert "its time limit (--time) is over the partition's MaxTime" in r.stderr, r.stderr
