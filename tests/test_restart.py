"""Restarts and outages: history and identity survive, nothing that ran is lost or orphaned."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from computenet.model import JobState
from conftest import PYTHON, Network, free_port

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # kills and restarts processes: long waits


def _wait_state(net: Network, job_id: str, state: JobState, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with net.client() as c:
        while time.monotonic() < deadline:
            if c.get(job_id).state is state:
                return
            time.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {state}")


def _procs_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


def test_restart_keeps_history_and_pool_identity(network: Network) -> None:
    network.start_agent("alpha")
    r = network.cnet("run", "--name", "before-restart", "--", "sh", "-c", "echo kept")
    assert r.returncode == 0
    pool_before = network.wait_pool("alpha")
    assert network.node is not None
    network.node.stop()  # while its agent long-polls: the poll answers, nothing is cut off
    log = network.node.output()
    assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log
    network.stop()
    network.start_node()
    network.start_agent("alpha")
    assert network.wait_pool("alpha") == pool_before
    with network.client() as c:
        assert len(c.pools()) == 1
        job = c.list(name="before-restart").items[0]
        assert job.state is JobState.COMPLETE and job.pool == pool_before
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "kept\n"
    r = network.cnet("run", "--", "true")
    assert r.returncode == 0


def test_a_second_agent_of_one_pool_is_refused(network: Network) -> None:
    """It would be the same pool twice: on one state directory, one identity and one
    heartbeat sequence; on another, two agents taking turns and running its jobs twice.
    An agent that crashed with its state lost is taken over once its pool goes quiet."""
    first = network.start_agent("alpha")

    def another(state: str) -> str:
        ran = subprocess.run(
            [*PYTHON, "agent", "run", "--node", network.url, "--token", network.token,
             "--pool", "alpha", "--state-dir", str(network.home / "agents" / state)],
            env={**network.env, "CNET_TAKEOVER_WAIT": "2"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
        return ran.stderr

    assert first.popen is not None
    assert f"another agent (pid {first.popen.pid}) runs with" in another("alpha")
    cpi = network.wait_pool("alpha")  # the first is unharmed
    assert "is online with another agent's key" in another("alpha-copy")
    with network.client() as c:
        key = c.pool(cpi).public_key
        first.kill()  # and its state with it: a new agent has a new key
        network.start_agent("alpha", "--state-dir", str(network.home / "agents" / "alpha-new"))
        deadline = time.monotonic() + 40
        while c.pool(cpi).public_key == key and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.pool(cpi).public_key != key  # taken over once the pool went quiet
    assert network.cnet("run", "--pool", "alpha", "--", "true").returncode == 0


def test_job_finishing_while_node_is_down_is_reported_when_it_returns(network: Network) -> None:
    network.start_agent("alpha")
    with network.client() as c:
        job = c.submit(command=["sh", "-c", "sleep 2; echo finished"])
    _wait_state(network, job.id, JobState.RUNNING)
    assert network.node is not None
    network.node.kill()  # no goodbye: the agent must notice and retry
    time.sleep(3)  # the job ends while nobody listens
    network.start_node()
    _wait_state(network, job.id, JobState.COMPLETE)
    with network.client() as c:
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "finished\n"
        assert c.get(job.id).exit_code == 0
        # and the agent takes new work on the same connection logic
        assert c.run(["true"]).state is JobState.COMPLETE


def test_agent_killed_outright_leaves_no_orphan_after_restart(network: Network) -> None:
    """The restarted agent stops what the earlier one left running, and only that: a job
    that leaves a ``pid.json`` in its directory naming another process (as an older
    release kept it there) cannot have the agent kill it."""
    agent = network.start_agent("alpha")
    marker = "sleep 187"
    bystander = subprocess.Popen(["sleep", "193"], start_new_session=True)
    forged = json.dumps(
        {"pid": bystander.pid, "started_at": psutil.Process(bystander.pid).create_time()}
    )
    try:
        with network.client() as c:
            job = c.submit(command=["sh", "-c", f"echo '{forged}' > pid.json; {marker}"])
        _wait_state(network, job.id, JobState.RUNNING)
        agent.kill()
        assert _procs_with(marker), "the job runs in its own session and outlives a killed agent"
        network.start_agent("alpha")
        _wait_state(network, job.id, JobState.FAILED)
        with network.client() as c:
            assert "agent restarted" in c.get(job.id).reason
        deadline = time.monotonic() + 10
        while _procs_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _procs_with(marker)
        assert bystander.poll() is None, "the agent killed a process the job named"
    finally:
        bystander.kill()
        bystander.wait()


def test_agent_stopped_cleanly_stops_its_jobs_and_reports_them(network: Network) -> None:
    agent = network.start_agent("alpha")
    marker = "sleep 189"
    with network.client() as c:
        job = c.submit(command=["sh", "-c", marker])
        _wait_state(network, job.id, JobState.RUNNING)
        assert agent.stop() == 0
        assert not _procs_with(marker)
        final = c.get(job.id)
        assert final.state is JobState.FAILED
        assert final.reason == "the agent was stopped"


def _first_run(env: dict[str, str], up: subprocess.Popen[bytes]) -> str:
    """The output of the first ``cnet run`` that succeeds once ``cnet up`` is ready."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and up.poll() is None:
        ran = subprocess.run(
            [*PYTHON, "run", "--", "python3", "-c", "print(6*7)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ran.returncode == 0:
            return ran.stdout
        time.sleep(0.5)
    return ""


def test_up_starts_everything_and_ctrl_c_stops_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CNET_")}
    env.update(CNET_HOME=str(tmp_path), CNET_URL=f"http://127.0.0.1:{port}")
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    root = __import__("os").geteuid() == 0  # then its agent runs jobs as nobody
    asked = ["-o", "user=nobody"] if root else []
    up = subprocess.Popen(
        [*PYTHON, "up", "--port", str(port), *asked], env=env, stdout=log, stderr=log
    )
    try:
        assert _first_run(env, up) == "42\n", (tmp_path / "up.log").read_text()
        who = subprocess.run(
            [*PYTHON, "run", "--", "id", "-un"], env=env, capture_output=True, text=True
        )
        assert who.stdout == ("nobody\n" if root else f"{psutil.Process().username()}\n")
        marker = "sleep 191"
        subprocess.run(
            [*PYTHON, "run", "-d", "--", "sh", "-c", marker],
            env=env,
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 20
        while not _procs_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _procs_with(marker)
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3  # node, agent, job
        up.send_signal(signal.SIGINT)
        assert up.wait(40) == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)

        # Started again on another port, it is the same node: the CLI needs no CNET_TOKEN.
        env["CNET_URL"] = f"http://127.0.0.1:{free_port()}"
        up = subprocess.Popen(
            [*PYTHON, "up", "--port", env["CNET_URL"].rsplit(":", 1)[1], *asked],
            env=env,
            stdout=log,
            stderr=log,
        )
        assert _first_run(env, up) == "42\n", (tmp_path / "up.log").read_text()
        up.send_signal(signal.SIGINT)
        assert up.wait(40) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
