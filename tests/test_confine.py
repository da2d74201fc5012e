"""A local job keeps to what it was granted: pinned to its own cores, held to its memory,
and told plainly when it ran out of memory."""

from __future__ import annotations

import json
import os

import pytest

from computenet.agent.backends.confine import job_cgroups
from computenet.model import JobState
from conftest import Network

pytestmark = pytest.mark.slow

AFFINITY = "import json, os; print(json.dumps(sorted(os.sched_getaffinity(0))))"


def test_memory_overrun_is_reported_as_such(shared: Network) -> None:
    r = shared.cnet(
        "run", "--mem", "200M", "--", "python3", "-c", "b = bytearray(1024**3)", timeout=60
    )
    assert r.returncode == 1 and "MemoryError" in r.stderr
    with shared.client() as c:
        job = c.list(limit=1).items[0]
    assert job.state is JobState.FAILED
    assert job.reason.startswith("memory limit of 200.0 MiB exceeded"), job.reason


def test_within_its_memory_a_job_runs(shared: Network) -> None:
    r = shared.cnet(
        "run", "--mem", "200M", "--", "python3", "-c",
        "b = bytearray(50 * 1024**2); print(len(b))", timeout=60,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, f"{50 * 1024**2}\n"), r.stderr


@pytest.mark.skipif(
    job_cgroups() is not None,
    reason="LOUD SKIP: with a delegated cgroup v2, memory.max holds the sandbox's own "
    "processes (some MB) with the job",
)
def test_a_small_memory_limit_is_the_jobs_alone(shared: Network) -> None:
    """The limit (an rlimit) holds the job, not the sandbox's own process that starts
    it (a Python of some MB): a job asking for little memory runs in it, and one that
    fails in it is not said to have run out of memory."""
    r = shared.cnet("run", "--mem", "2M", "--", "sh", "-c", "echo small", timeout=60)
    assert (r.returncode, r.stdout) == (0, "small\n"), r.stderr
    r = shared.cnet("run", "--mem", "2M", "--", "sh", "-c", "exit 3", timeout=60)
    assert r.returncode == 3
    with shared.client() as c:
        assert c.list(limit=1).items[0].reason == "exit code 3"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell apart")
def test_jobs_are_pinned_to_cores_of_their_own(shared: Network) -> None:
    hold = f"import os, time; print(sorted(os.sched_getaffinity(0)), flush=True); {'time.sleep(8)'}"
    with shared.client() as c:
        first = c.submit(command=["python3", "-c", hold], resources={"cpus": 1})
        second = c.submit(command=["python3", "-c", AFFINITY], resources={"cpus": 1})
        assert c.wait(second.id, timeout=60).state is JobState.COMPLETE
        mine = json.loads("".join(ch["data"] for ch in c.logs(second.id)))
        c.wait(first.id, timeout=60)
        theirs = json.loads("".join(ch["data"] for ch in c.logs(first.id)))
        both = c.submit(command=["python3", "-c", AFFINITY], resources={"cpus": 2})
        assert c.wait(both.id, timeout=60).state is JobState.COMPLETE
        wide = json.loads("".join(ch["data"] for ch in c.logs(both.id)))
    assert len(mine) == len(theirs) == 1 and mine != theirs
    assert len(wide) == 2
