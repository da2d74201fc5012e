"""The Ray backend end to end: a real node, real agents and real Ray heads.

Two pools per node: ``raylocal``, whose agent starts a Ray head of its own (with 3 CPUs,
more than this machine has, so the pool's size can only have come from Ray), and
``rayjoin``, whose agent joins a head started here with ``ray start`` (2 CPUs) and runs
its jobs in a ``job_dir`` of their own, taking their output from Ray's job logs. Ray is
slow to start on a small machine, so each head starts once per module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from computenet.agent.backends import LaunchError, Task
from computenet.agent.backends.ray import RayBackend, job_output
from computenet.model import JobSpec, JobState, Machine
from computenet.sdk import ApiError
from conftest import DATABASES, Network, _network

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

START_TIMEOUT = 240.0  # a Ray head on a busy 2-core machine
RUN_TIMEOUT = 180.0
CPUS = {"local": 3, "join": 2}


@dataclass
class Head:
    popen: subprocess.Popen[bytes]
    url: str
    temp_dir: str


@dataclass
class RayNet:
    net: Network
    pools: dict[str, str]  # mode → pool CPI
    agent_args: dict[str, tuple[str, ...]]  # pool name → extra agent arguments
    job_dir: Path


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(p.pid) == sid:
                out.append(p)
    return out


def _wait_gone(sid: int, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _session(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _wait_ready(url: str, alive: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            raise RuntimeError(f"ray start exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            r = httpx.get(f"{url}/api/v0/nodes", timeout=5)
            if any(n["state"] == "ALIVE" for n in r.json()["data"]["result"]["result"]):
                return
        time.sleep(0.5)
    raise RuntimeError(f"ray head did not start:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    with _head(tmp_path_factory.mktemp("ray-head") / "head.log") as head:
        yield head


@contextlib.contextmanager
def _head(log: Path) -> Iterator[Head]:
    """A head the way an operator starts one, bound to 127.0.0.1; stopped by its own
    process and session, never with ``ray stop``, which would take every Ray here."""
    temp_dir = tempfile.mkdtemp(prefix="cnet-rt-", dir="/tmp")  # Unix socket paths are short
    p = _free_ports(11)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNET_", "RAY_"))}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # single node: everything on 127.0.0.1
        RAY_AUTH_MODE="disabled",  # loopback only; a token file in ~/.ray must not matter
        DASHBOARD_METRIC_PORT=str(p[9]),
        AUTOSCALER_METRIC_PORT=str(p[10]),
    )
    args = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--dashboard-port={p[0]}",
        f"--port={p[1]}",
        f"--node-manager-port={p[2]}",
        f"--object-manager-port={p[3]}",
        f"--dashboard-agent-listen-port={p[4]}",
        f"--dashboard-agent-grpc-port={p[5]}",
        f"--runtime-env-agent-port={p[6]}",
        f"--metrics-export-port={p[7]}",
        f"--ray-client-server-port={p[8]}",
    ]
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    head = Head(popen, f"http://127.0.0.1:{p[0]}", temp_dir)
    try:
        _wait_ready(head.url, popen, log)
        yield head
    finally:
        popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(30)
        left = _wait_gone(popen.pid, 10)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        popen.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"the Ray head left processes behind: {left}"


def _start_agents(net: Network, args: dict[str, tuple[str, ...]]) -> dict[str, str]:
    for name, extra in args.items():
        net.start_agent(name, *extra, wait=False)
    return {name: net.wait_pool(name, timeout=START_TIMEOUT) for name in args}


@pytest.fixture(scope="module", params=DATABASES)
def ray_net(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ray_head: Head
) -> Iterator[RayNet]:
    tmp = tmp_path_factory.mktemp(f"ray-{request.param}")
    job_dir = tmp / "remote-jobs"
    args = {
        "raylocal": ("--backend", "ray", "-o", f"num_cpus={CPUS['local']}"),
        "rayjoin": (
            "--backend",
            "ray",
            "--ray-address",
            ray_head.url,
            "-o",
            f"job_dir={job_dir}",
        ),
    }
    head_pid = 0
    for net in _network(request.param, tmp, request):
        cpis = _start_agents(net, args)
        record = net.home / "agents" / "raylocal" / "ray" / "head.json"
        head_pid = json.loads(record.read_text())["pid"]
        yield RayNet(net, {"local": cpis["raylocal"], "join": cpis["rayjoin"]}, args, job_dir)
    # The network is stopped: the agent's own head must be gone, and only it.
    left = _wait_gone(head_pid, 30)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not left, f"the agent left its Ray head behind: {left}"
    assert ray_head.popen.poll() is None, "stopping the agent must not stop another Ray"


@pytest.fixture(params=["local", "join"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _procs_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_state(net: Network, job_id: str, states: set[JobState], timeout: float) -> JobState:
    deadline = time.monotonic() + timeout
    with net.client() as c:
        while time.monotonic() < deadline:
            state = c.get(job_id).state
            if state in states:
                return state
            time.sleep(0.1)
    raise AssertionError(f"{job_id} never reached {states}")


def test_run_prints_output_and_exits_zero(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    r = ray_net.net.cnet(
        "run", "--pool", pool, "--", "python3", "-c", "print(6*7)", timeout=RUN_TIMEOUT
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "42\n"


def test_exit_code_and_streams(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    script = "echo out; echo err >&2; exit 3"
    r = ray_net.net.cnet("run", "--pool", pool, "--", "sh", "-c", script, timeout=RUN_TIMEOUT)
    assert r.returncode == 3, r.stderr
    if mode == "local":  # the job writes its own files: the streams stay apart
        assert r.stdout == "out\n"
        assert "err\n" in r.stderr
    else:  # through Ray's job log, which merges them
        assert r.stdout == "out\nerr\n"


def test_command_not_found(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    r = ray_net.net.cnet("run", "--pool", pool, "--", "no-such-program-here", timeout=RUN_TIMEOUT)
    assert r.returncode == 127
    if mode == "local":  # one machine: checked before Ray is asked
        assert "command not found: no-such-program-here" in r.stderr
    else:
        assert "not found" in r.stdout


def test_job_environment_and_working_directory(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    script = 'echo "$CNET_JOB_ID $GREETING ${CNET_HOME:-none} $(pwd) $HOME $CNET_DEVICES"'
    r = ray_net.net.cnet(
        "run", "--pool", pool, "-e", "GREETING=hi", "--", "sh", "-c", script, timeout=RUN_TIMEOUT
    )
    assert r.returncode == 0, r.stderr
    job_id, greeting, cnet_home, cwd, home, devices = r.stdout.split()
    assert job_id.startswith("j-") and greeting == "hi"
    assert devices == "[]"  # as on every backend: unset, a job reading it failed here
    assert cnet_home == "none"  # nothing of the agent's own environment leaks in
    if mode == "local":
        expected = ray_net.net.home / "agents" / "raylocal" / "jobs" / f"{job_id}.1"
    else:
        expected = ray_net.job_dir / f"{job_id}.1"
    assert Path(cwd) == expected and Path(home) == expected


def test_logs_follow_while_running(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    script = "for i in 1 2 3; do echo line$i; sleep 1.5; done"
    with ray_net.net.client() as c:
        job = c.submit(command=["sh", "-c", script], pool=pool)
        arrivals = [(time.monotonic(), ch["data"]) for ch in c.logs(job.id, follow=True)]
        assert "".join(data for _, data in arrivals) == "line1\nline2\nline3\n"
        assert arrivals[-1][0] - arrivals[0][0] > 1.0, "output arrived only at the end"
        assert c.get(job.id).state is JobState.COMPLETE
    r = ray_net.net.cnet("logs", job.id)
    assert r.stdout == "line1\nline2\nline3\n"


def test_time_limit_stops_the_job_and_says_why(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    marker = f"sleep {181 if mode == 'local' else 182}"
    start = time.monotonic()
    r = ray_net.net.cnet(
        "run",
        "--pool",
        pool,
        "--time",
        "3s",
        "--",
        "sh",
        "-c",
        f"{marker} & {marker}; echo never",
        timeout=RUN_TIMEOUT,
    )
    assert time.monotonic() - start < 90
    assert r.returncode != 0
    assert "never" not in r.stdout
    assert "time limit of 3s exceeded" in r.stderr
    _wait_for(lambda: not _procs_with(marker), 20, f"{marker} to be gone")
    with ray_net.net.client() as c:
        job = c.list(pool=pool, limit=1).items[0]
    assert job.state is JobState.FAILED
    assert job.reason == "time limit of 3s exceeded"


def test_cancel_stops_the_whole_tree(ray_net: RayNet, mode: str) -> None:
    pool = ray_net.pools[mode]
    marker = f"sleep {183 if mode == 'local' else 184}"
    r = ray_net.net.cnet(
        "run", "--pool", pool, "-d", "--", "sh", "-c", f"{marker} & {marker} & wait"
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    _wait_for(lambda: len(_procs_with(marker)) >= 2, RUN_TIMEOUT, "the job's processes")
    r = ray_net.net.cnet("cancel", job_id)
    assert r.returncode == 0, r.stderr
    assert "CANCELED" in r.stdout
    _wait_for(lambda: not _procs_with(marker), 30, f"{marker} to be gone")
    state = _wait_state(ray_net.net, job_id, {JobState.CANCELED, JobState.FAILED}, 60)
    assert state is JobState.CANCELED


def test_job_waiting_in_rays_queue_is_not_yet_running(ray_net: RayNet, mode: str) -> None:
    """The pool takes work beyond its size into Ray's own queue; a job waiting there is
    SCHEDULED, not RUNNING, and its start is when Ray ran it."""
    pool = ray_net.pools[mode]
    with ray_net.net.client() as c:
        cap = c.pool(pool).capacity.cpus
        hog = c.submit(command=["sleep", "300"], pool=pool, resources={"cpus": cap})
        try:
            _wait_state(ray_net.net, hog.id, {JobState.RUNNING}, RUN_TIMEOUT)
            job = c.submit(command=["echo", "my turn"], pool=pool)
            _wait_for(lambda: c.pool(pool).allocated.cpus > cap, 30, "the job to be placed")
            time.sleep(3)  # several status rounds: Ray holds it, so it must not be running
            assert c.get(job.id).state is JobState.SCHEDULED
        finally:
            c.cancel(hog.id)
        released = time.time()
        final = c.wait(job.id, timeout=RUN_TIMEOUT)
        assert final.state is JobState.COMPLETE, final.reason
        assert final.started_at is not None and final.started_at.timestamp() >= released - 1
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "my turn\n"


def test_background_leftovers_are_reaped_on_this_machine(ray_net: RayNet) -> None:
    """Ray leaves a job's background processes running after it exits; the agent's own
    head is on this machine, so the agent ends them, as the local backend does."""
    marker = "sleep 185"
    pool = ray_net.pools["local"]
    r = ray_net.net.cnet(
        "run", "--pool", pool, "--", "sh", "-c", f"{marker} & echo bg", timeout=RUN_TIMEOUT
    )
    assert r.returncode == 0 and r.stdout == "bg\n"
    _wait_for(lambda: not _procs_with(marker), 20, f"{marker} to be gone")


def test_job_larger_than_the_cluster_is_refused(ray_net: RayNet, mode: str) -> None:
    pool, cpus = ray_net.pools[mode], CPUS[mode] + 1
    with ray_net.net.client() as c, pytest.raises(ApiError) as info:
        c.submit(command=["true"], pool=pool, resources={"cpus": cpus})
    assert info.value.status == 409
    assert f"needs {cpus} CPUs" in str(info.value)
    r = ray_net.net.cnet("run", "--pool", pool, "--cpus", str(cpus), "--", "true")
    assert r.returncode != 0
    assert pool in r.stderr


def test_resources_show_what_ray_reports(ray_net: RayNet, mode: str) -> None:
    pool, cpus = ray_net.pools[mode], CPUS[mode]
    with ray_net.net.client() as c:
        p = next(p for p in c.pools() if p.cpi == pool)
    assert p.backend == "ray"
    assert p.capacity.cpus == cpus
    assert [m.cpus for m in p.machines] == [cpus]
    assert p.machines[0].name == "127.0.0.1"  # Ray's node name
    assert 0 < p.capacity.memory_bytes <= psutil.virtual_memory().total
    r = ray_net.net.cnet("resources")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith(pool))
    assert re.search(rf"\bray\b.*\s[\d.]+/{cpus}\s", row), row


def test_local_head_listens_on_loopback_only(ray_net: RayNet) -> None:
    record = ray_net.net.home / "agents" / "raylocal" / "ray" / "head.json"
    head = psutil.Process(json.loads(record.read_text())["pid"])
    procs = [head, *head.children(recursive=True)]
    listening = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.add(conn.laddr.ip)
    assert listening, "the head listens somewhere"
    assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def test_agent_stopped_cleanly_stops_its_jobs(ray_net: RayNet) -> None:
    """As with every backend: no job outlives an agent that was asked to stop."""
    net, pool, marker = ray_net.net, ray_net.pools["join"], "sleep 186"
    with net.client() as c:
        job = c.submit(command=["sh", "-c", marker], pool=pool)
    _wait_for(lambda: bool(_procs_with(marker)), RUN_TIMEOUT, "the job to run")
    assert net.agents["rayjoin"].stop() == 0
    assert not _procs_with(marker)
    with net.client() as c:
        done = c.get(job.id)
    assert done.state is JobState.FAILED and done.reason == "the agent was stopped"
    net.start_agent("rayjoin", *ray_net.agent_args["rayjoin"], wait=False)
    assert net.wait_pool("rayjoin", timeout=START_TIMEOUT) == pool


def test_agent_restart_follows_the_running_job(ray_net: RayNet, mode: str) -> None:
    """Killed outright, the agent leaves the Ray job running (its local head too); the
    next agent finds it by its submission id and reports its end, once."""
    net = ray_net.net
    name = "raylocal" if mode == "local" else "rayjoin"
    pool = ray_net.pools[mode]
    marker = f"sleep {8.5 if mode == 'local' else 8.6}"
    with net.client() as c:
        job = c.submit(command=["sh", "-c", f"{marker}; echo finished"], pool=pool)
    _wait_for(lambda: bool(_procs_with(marker)), RUN_TIMEOUT, "the job to run")
    net.agents[name].kill()
    assert _procs_with(marker), "the Ray job outlives a killed agent"
    agent = net.start_agent(name, *ray_net.agent_args[name], wait=False)
    line = f"re-attached to {job.id}#1"
    _wait_for(lambda: line in agent.output(), START_TIMEOUT, "the new agent to re-attach")
    assert net.wait_pool(name, timeout=START_TIMEOUT) == pool
    _wait_state(net, job.id, {JobState.COMPLETE, JobState.FAILED}, RUN_TIMEOUT)
    with net.client() as c:
        done = c.get(job.id)
        assert done.state is JobState.COMPLETE, done.reason
        assert done.exit_code == 0
        assert [a.number for a in done.attempts] == [1]
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "finished\n"
        assert c.run(["true"], pool=pool).state is JobState.COMPLETE


def test_job_output_drops_what_ray_adds_wherever_it_lands() -> None:
    sid, entrypoint = "cnet-j-1-1", "exec sh -c 'echo hi'"
    announce = f"Running entrypoint for job {sid}: {entrypoint}\n"
    setup = "2026-01-02 03:04:05,678\tINFO job_manager.py:581 -- Runtime env is setting up.\n"
    assert job_output(setup, sid, entrypoint) is None  # not started yet
    assert job_output(setup + announce + "hi\n", sid, entrypoint) == "hi\n"
    # The announcement is written after the process starts: early output may precede it.
    assert job_output(setup + "early\n" + announce + "late\n", sid, entrypoint) == "early\nlate\n"


def test_request_no_single_node_can_hold_is_refused(tmp_path: Path) -> None:
    """The node sees the pool's sum (4 CPUs here); Ray would keep a 3-CPU job pending."""
    backend = RayBackend(address="http://127.0.0.1:1")
    backend._machines = [Machine(name=n, cpus=2, memory_bytes=2**30) for n in ("node-a", "node-b")]
    task = Task("j-1", 1, "t", JobSpec(command=["true"], resources={"cpus": 3}), [], tmp_path)
    with pytest.raises(LaunchError) as info:
        backend._check_fits(task)
    assert info.value.reason.startswith("no Ray node has 3 CPUs; the largest, node-a, has 2")


def _where() -> tuple[bool, int]:
    import os

    import ray

    return ray.get_runtime_context().get_task_id() is not None, os.getpid()


def test_functions_on_a_ray_pool_run_as_ray_tasks(ray_net: RayNet, mode: str) -> None:
    import computenet

    ex = computenet.Executor(
        resources={"cpus": 0.5}, pool=ray_net.pools[mode], url=ray_net.net.url,
        token=ray_net.net.token,
    )  # fmt: skip
    try:
        results = list(ex.map(lambda _: _where(), range(4), timeout=RUN_TIMEOUT))
        assert all(in_task for in_task, _ in results), results
        assert ex.submit(pow, 2, 10).result(timeout=RUN_TIMEOUT) == 1024
    finally:
        ex.shutdown()


def test_a_pool_whose_ray_cluster_is_gone_takes_no_work(network: Network, tmp_path: Path) -> None:
    """The cluster died under its agent: the pool stayed online with all its CPUs free,
    and jobs placed there failed at once ('Ray refused the job'). Now the agent says the
    pool takes no work, and the job waits for a pool that can run it."""
    with _head(tmp_path / "head.log") as head:
        network.start_agent("gone", "--backend", "ray", "--ray-address", head.url, wait=False)
        cpi = network.wait_pool("gone", timeout=START_TIMEOUT)
        for proc in _session(head.popen.pid):  # the whole cluster, at once
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with network.client() as c:
            deadline = time.monotonic() + 60
            while c.pool(cpi).status.value == "online" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert c.pool(cpi).status.value != "online"
            job = c.submit(command=["true"])
            time.sleep(3)
            assert c.get(job.id).state is JobState.QUEUED  # not placed there to fail
            c.cancel(job.id)
        said = network.agents["gone"].output()
        assert "does not answer" in said and "the pool takes no work until it answers" in said
