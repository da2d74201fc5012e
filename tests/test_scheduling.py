"""Placement across heterogeneous, priced pools: filters, goals, waiting for a better pool,
and the optimizer table that explains it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from computenet.model import JobState
from conftest import Network

pytestmark = pytest.mark.slow

POOLS = {
    # name: region, cpus, cpu price per hour, carbon intensity, accelerators
    "cheap-east": ("cn-east", 2, 0.10, 600.0, 0),
    "dear-east": ("cn-east", 8, 1.00, 400.0, 0),
    "green-west": ("cn-west", 4, 0.50, 50.0, 0),
    "gpu-west": ("cn-west", 16, 0.30, 300.0, 4),
}


def config(tmp: Path, name: str) -> Path:
    region, cpus, price, carbon, n_gpus = POOLS[name]
    devices = [
        {
            "kind": "gpu",
            "name": f"gpu{i}",
            "index": i,
            "vendor": "nvidia",
            "model": "H100-SXM5-80GB",
            "arch": "sm_90",
            "memory_bytes": "80G",
        }
        for i in range(n_gpus)
    ]
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "pool": name,
                "region": region,
                "carbon_intensity": carbon,
                "price": {"cpu_hour": price, "gpu_hour": 20.0},
                "machines": [
                    {"name": name, "cpus": cpus, "memory_bytes": "32G", "devices": devices}
                ],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def net(shared: Network, tmp_path_factory: pytest.TempPathFactory) -> Network:
    tmp = tmp_path_factory.mktemp("priced")
    for name in POOLS:
        shared.start_agent(name, "--config", str(config(tmp, name)))
    return shared


def cpi(net: Network, name: str) -> str:
    with net.client() as c:
        return next(p.cpi for p in c.pools() if p.name == name)


def run_on(net: Network, **spec: Any) -> str:
    with net.client() as c:
        job = c.wait(c.submit(command=["true"], **spec).id, timeout=60)
        assert job.state is JobState.COMPLETE, job.reason
        assert job.pool is not None
        return job.pool.rsplit("/", 1)[-1]


def test_every_job_lands_on_a_pool_that_satisfies_it(net: Network) -> None:
    assert run_on(net, resources={"gpus": 2, "cpus": 1}) == "gpu-west"
    assert run_on(net, resources={"cpus": 6}, regions=["cn-east"]) == "dear-east"
    assert run_on(net, resources={"cpus": 1}, regions=["cn-west"], optimize="cost") == "gpu-west"
    assert run_on(net, resources={"cpus": 12}) == "gpu-west"


def test_goals_pick_cheapest_greenest_and_soonest(net: Network) -> None:
    assert (
        run_on(
            net, resources={"cpus": 1}, optimize="cost", pool=None, regions=["cn-east", "cn-west"]
        )
        == "cheap-east"
    )
    assert run_on(net, resources={"cpus": 1}, optimize="carbon") == "green-west"


def test_cost_waits_for_the_cheap_pool_time_does_not(net: Network) -> None:
    cheap = cpi(net, "cheap-east")
    with net.client() as c:
        blocker = c.submit(
            command=["sleep", "60"], resources={"cpus": 2, "time": "20s"}, pool=cheap
        )
        deadline = time.monotonic() + 20
        while c.get(blocker.id).state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        plan = c.plan(command=["true"], resources={"cpus": 1, "time": "1m"}, optimize="cost")
        assert plan.candidates[0].pool == cheap and not plan.candidates[0].fits_now
        assert 0 < plan.candidates[0].est_start_s <= 20
        assert plan.choice is None and "would wait for" in plan.decision
        patient = c.submit(command=["true"], resources={"cpus": 1, "time": "1m"}, optimize="cost")
        hasty = c.submit(command=["true"], resources={"cpus": 1, "time": "1m"}, optimize="time")
        assert c.wait(hasty.id, timeout=30).state is JobState.COMPLETE
        assert c.get(patient.id).state is JobState.QUEUED
        c.cancel(blocker.id)
        done = c.wait(patient.id, timeout=30)
        assert done.state is JobState.COMPLETE and done.pool == cheap
        assert c.get(hasty.id).pool != cheap


def test_dry_run_prints_the_optimizer_table(net: Network) -> None:
    r = net.cnet(
        "run", "--dry-run", "--optimize", "cost", "--gpus", "1", "--time", "30m", "--", "true"
    )
    assert r.returncode == 0, r.stderr
    assert "goal: cost" in r.stdout
    gpu = cpi(net, "gpu-west")
    assert f"→ {gpu}" in r.stdout or f"→  {gpu}" in r.stdout
    assert "rejected" in r.stdout and "needs 1 GPUs, the pool has 0" in r.stdout
    assert "would run on" in r.stdout
    with net.client() as c:
        plan = c.plan(command=["true"], resources={"gpus": 1, "time": "30m"}, optimize="cost")
        top = plan.candidates[0]
        assert top.est_cost == pytest.approx((1 * 0.30 + 20.0) * 0.5)
        assert top.currency == "CNY" and set(top.parts) >= {"price", "start_time", "carbon"}
        assert c.counts() == c.counts()  # a plan submits nothing


def test_find_for_a_job_file(net: Network, tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        'command: ["true"]\nresources: {cpus: 3}\nregions: [cn-west]\noptimize: carbon\n'
    )
    r = net.cnet("find", "--for", str(job))
    assert r.returncode == 0, r.stderr
    assert "green-west" in r.stdout.split("\n")[2]  # the first candidate row
    assert "not one of cn-west" in r.stdout


def test_a_goal_the_scheduling_file_defines_can_be_asked_for(
    network: Network, tmp_path: Path
) -> None:
    """Before, it could only be the node's default: ``--optimize near`` was a 422 naming
    the four built-in goals."""
    f = tmp_path / "scheduling.yaml"
    f.write_text("weights: {near: {network: 1.0}}\n")
    network.stop()
    network.overrides["CNET_SCHEDULING"] = str(f)
    network.start_node()
    network.start_agent("alpha")
    with network.client() as c:
        assert c.plan(command=["true"], optimize="near").goal == "near"
    ran = network.cnet("run", "--optimize", "near", "--", "echo", "near")
    assert ran.returncode == 0 and ran.stdout == "near\n", ran.stderr
    far = network.cnet("run", "--optimize", "far", "--", "true")
    assert far.returncode != 0 and "no goal 'far' for this node" in far.stderr, far.stderr
    assert "near" in far.stderr and "Traceback" not in far.stderr
