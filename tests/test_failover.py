"""Failure detection: a pool that stops heartbeating goes suspect, then offline; its work
is requeued with a new attempt and completes elsewhere, and the old attempt is fenced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from computenet.agent.identity import Identity
from computenet.agent.link import NodeLink
from computenet.model import (
    Heartbeat,
    JobState,
    Machine,
    Pool,
    PoolInventory,
    PoolStatus,
    ProviderRegistration,
    Report,
    ReportBatch,
    TelemetrySample,
    Usage,
)
from conftest import PYTHON, Network

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # kills and restarts processes: long waits


def _procs_with(marker: str) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ]


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _identity(tmp: Path) -> Identity:
    return Identity.load(tmp / "identity", tmp / "provider.key")


async def _bare_pool(link: NodeLink, name: str, cpus: int) -> Pool:
    """A pool registered by hand, with no agent behind it: the test speaks for it."""
    return await link.register(
        ProviderRegistration(name=name, public_key=link.identity.provider_key.public_key),
        PoolInventory(
            provider=name,
            name=name,
            public_key=link.identity.pool_key.public_key,
            machines=[Machine(name="m0", cpus=cpus, memory_bytes=2**30)],
        ),
    )


@pytest.fixture
def quick(network: Network) -> Network:
    """The same node, restarted with short heartbeat timeouts."""
    network.stop()
    network.overrides.update(CNET_SUSPECT_AFTER="2", CNET_OFFLINE_AFTER="4")
    network.start_node()
    return network


def test_frozen_agent_job_requeued_elsewhere_and_fenced_on_return(quick: Network) -> None:
    network = quick
    first = network.start_agent("first")
    network.start_agent("second")
    marker = "sleep 60.193"  # only on the first pool: the second finishes at once
    with network.client() as c:
        pools = {p.name: p.cpi for p in c.pools()}
        job = c.submit(
            command=[
                "sh",
                "-c",
                f"case $CNET_POOL in */first) {marker};; esac; echo done-by-$CNET_POOL",
            ]
        )
        _wait(lambda: c.get(job.id).state is JobState.RUNNING, 20, "the job to start")
        victim = c.get(job.id).pool
        assert victim == pools["first"]  # first-fit: registered first
        assert first.popen is not None
        os.kill(first.popen.pid, signal.SIGSTOP)  # alive but silent: no heartbeats
        try:
            _wait(lambda: c.get(job.id).attempt == 2, 30, "the requeue")
            statuses = {p.name: p.status for p in c.pools()}
            assert statuses["first"] is PoolStatus.offline
            done = c.wait(job.id, timeout=30)
            assert done.state is JobState.COMPLETE
            assert done.pool == pools["second"]
            assert [a.number for a in done.attempts] == [1, 2]
            assert done.attempts[0].state is JobState.FAILED
            assert "went offline" in done.attempts[0].reason
            assert _procs_with(marker), "the first attempt still runs on the frozen pool"
        finally:
            os.kill(first.popen.pid, signal.SIGCONT)
        # Back in touch: the first pool is told to stop its stale attempt.
        _wait(lambda: not _procs_with(marker), 20, "the stale attempt to be stopped")
        _wait(
            lambda: {p.name: p.status for p in c.pools()}["first"] is PoolStatus.online,
            20,
            "the first pool to come back",
        )
        time.sleep(1.5)  # let the fenced attempt's report reach the node and be refused
        final = c.get(job.id)
        assert final.state is JobState.COMPLETE and final.pool == pools["second"]
        assert [a.state for a in final.attempts] == [JobState.FAILED, JobState.COMPLETE]
        out = "".join(ch["data"] for ch in c.logs(job.id))
        assert out.count("done-by-") == 1 and pools["second"] in out
        shown = network.cnet("logs", job.id)  # which attempt said it, as the CLI shows it
        assert shown.stdout == out and shown.stderr == "--- attempt 2 ---\n", shown.stderr
        assert network.cnet("logs", "--attempt", "1", job.id).stdout == ""
        # and the first pool's capacity is whole again
        first_pool = next(p for p in c.pools() if p.name == "first")
        assert first_pool.allocated.cpus == 0


def test_an_attached_run_pinned_to_a_silent_pool_says_why_it_waits(
    quick: Network, tmp_path: Path
) -> None:
    network = quick
    agent = network.start_agent("near")
    assert agent.popen is not None
    os.kill(agent.popen.pid, signal.SIGSTOP)
    try:
        with network.client() as c:
            _wait(
                lambda: (
                    next(p for p in c.pools() if p.name == "near").status is not PoolStatus.online
                ),
                20,
                "the pool to fall silent",
            )
            cpi = next(p.cpi for p in c.pools() if p.name == "near")
        dry = network.cnet("run", "--dry-run", "--pool", "near", "--", "true")
        assert dry.returncode == 0, dry.stderr  # as the run that follows: it waits
        assert f"would wait for {cpi}, which is not online" in dry.stdout, dry.stdout
        errors = tmp_path / "run.err"
        with open(errors, "w") as e:
            run = subprocess.Popen(
                [*PYTHON, "run", "--pool", "near", "--", "echo", "back"],
                env=network.env,
                stdout=subprocess.PIPE,
                stderr=e,
                text=True,
            )
        try:
            _wait(
                lambda: f"waiting for {cpi}, which is not online" in errors.read_text(),
                30,
                "the run to say why it waits",
            )
        finally:
            os.kill(agent.popen.pid, signal.SIGCONT)
        out, _ = run.communicate(timeout=60)
    finally:
        os.kill(agent.popen.pid, signal.SIGCONT)
    assert run.returncode == 0, errors.read_text()
    assert out == "back\n"
    assert errors.read_text().count("which is not online") == 1  # said once, not each poll


def test_job_gives_up_after_max_attempts(quick: Network) -> None:
    network = quick
    agent = network.start_agent("lonely")
    with network.client() as c:
        job = c.submit(command=["sleep", "60"])
        _wait(lambda: c.get(job.id).state is JobState.RUNNING, 20, "the job to start")
        for attempt in (1, 2, 3):
            assert agent.popen is not None
            agent.kill()
            if attempt < 3:
                _wait(lambda: c.get(job.id).state is JobState.QUEUED, 30, "the requeue")
                agent = network.start_agent("lonely")
                _wait(
                    lambda attempt=attempt: (
                        c.get(job.id).attempt == attempt + 1
                        and c.get(job.id).state is JobState.RUNNING
                    ),
                    30,
                    "the next attempt",
                )
        final = c.wait(job.id, timeout=40)
        assert final.state is JobState.FAILED
        assert "gave up after 3 attempts" in final.reason


def test_assignment_lost_on_the_way_is_sent_again(network: Network, tmp_path: Path) -> None:
    """A long poll can take an assignment and then have nobody to hand it to (its agent
    died while it waited). The pool's heartbeats keep saying it does not hold the job, so
    the node sends the assignment again, and the job is not stranded as SCHEDULED."""

    async def scenario() -> None:
        link = NodeLink(network.url, network.token, _identity(tmp_path))
        try:
            pool = await _bare_pool(link, "ghost", cpus=1)
            with network.client() as c:
                job = c.submit(command=["true"], pool=pool.cpi)
            taken = await link.directives(wait=10, resync=False)
            assert [a.job_id for a in taken.assign] == [job.id]  # ...and dropped on the floor
            sample = TelemetrySample(
                time=time.time(), cpu_percent=0, load_1m=0, memory_used_bytes=0,
                memory_total_bytes=2**30,
            )  # fmt: skip
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                await link.heartbeat(
                    Heartbeat(seq=time.time_ns() // 1000, sent_at=time.time(), sample=sample)
                )
                again = await link.directives(wait=1, resync=False)
                if again.assign:
                    assert [(a.job_id, a.attempt) for a in again.assign] == [(job.id, 1)]
                    return
            pytest.fail("the lost assignment was never sent again")
        finally:
            await link.close()

    asyncio.run(scenario())


def test_a_report_retried_while_its_original_is_applied_counts_once(
    network: Network, tmp_path: Path
) -> None:
    """An agent that timed out waiting for an answer sends its batch again while the node
    may still be applying the first. However the copies interleave, every one is
    answered, the job ends once, and its cores are given back once."""

    async def scenario() -> None:
        link = NodeLink(network.url, network.token, _identity(tmp_path))
        try:
            pool = await _bare_pool(link, "twice", cpus=4)
            with network.client() as c:
                spec = {"command": ["true"], "pool": pool.cpi, "resources": {"cpus": 1}}
                jobs = [c.submit(spec) for _ in range(4)]
            taken: set[str] = set()
            deadline = time.monotonic() + 30
            while len(taken) < len(jobs) and time.monotonic() < deadline:
                got = await link.directives(wait=2, resync=False)
                taken.update(a.job_id for a in got.assign)
            assert taken == {j.id for j in jobs}
            now = time.time()
            batch = ReportBatch(
                reports=[
                    r
                    for j in jobs
                    for r in (
                        Report(job_id=j.id, attempt=1, state=JobState.RUNNING, at=now - 1),
                        Report(
                            job_id=j.id,
                            attempt=1,
                            state=JobState.COMPLETE,
                            at=now,
                            exit_code=0,
                            usage=Usage(wall_seconds=1, cpu_seconds=0.5),
                        ),
                    )
                ]
            )
            answers = await asyncio.gather(*(link.report(batch) for _ in range(8)))
            assert all(a.refused == [] for a in answers), [a.refused for a in answers]
            with network.client() as c:
                assert {c.get(j.id).state for j in jobs} == {JobState.COMPLETE}
                assert c.pool(pool.cpi).allocated.cpus == 0
        finally:
            await link.close()

    asyncio.run(scenario())
