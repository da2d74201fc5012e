"""One node, three pools on three engines (local processes, a Ray cluster, a Slurm
cluster): work goes where its resources fit, and `cnet ps` says which pool ran what."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from bench.peers.slurm import SlurmCluster

from computenet.model import JobState
from conftest import DATABASES, Network, _network, slurm_cluster

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

LOCAL_CPUS = len(os.sched_getaffinity(0))
SLURM_CPUS = LOCAL_CPUS + 1
RAY_CPUS = LOCAL_CPUS + 3


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    yield from slurm_cluster(SLURM_CPUS)


@pytest.fixture(scope="module", params=DATABASES)
def trio(
    request: pytest.FixtureRequest, slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp(f"trio-{request.param}")
    for net in _network(request.param, tmp, request):
        net.start_agent("here", "--region", "r-local", wait=False)
        net.start_agent(
            "hpc",
            "--region",
            "r-slurm",
            "--backend",
            "slurm",
            "--partition",
            slurm.partition,
            "-o",
            f"conf={slurm.conf_path}",
            "-o",
            "poll=0.3",
            wait=False,
        )
        net.start_agent(
            "ray", "--region", "r-ray", "--backend", "ray", "-o", f"num_cpus={RAY_CPUS}", wait=False
        )
        for name in ("here", "hpc", "ray"):
            net.wait_pool(name, timeout=120)
        yield net


def test_each_engine_gets_the_work_that_fits_it(trio: Network) -> None:
    with trio.client() as c:
        pools = {p.name: p for p in c.pools()}
        assert pools["here"].capacity.cpus == LOCAL_CPUS
        assert pools["hpc"].capacity.cpus == SLURM_CPUS and pools["hpc"].backend == "slurm"
        assert pools["ray"].capacity.cpus == RAY_CPUS and pools["ray"].backend == "ray"
        cmd = ["sh", "-c", 'echo "ran on $CNET_POOL"']
        wide = c.submit(command=cmd, name="wide", resources={"cpus": RAY_CPUS})
        mid = c.submit(
            command=cmd, name="mid", resources={"cpus": SLURM_CPUS}, regions=["r-slurm", "r-local"]
        )
        small = c.submit(command=cmd, name="small", resources={"cpus": 1}, regions=["r-local"])
        done = {j.name: c.wait(j.id, timeout=120) for j in (wide, mid, small)}
        for name, job in done.items():
            assert job.state is JobState.COMPLETE, (name, job.reason)
            assert "".join(ch["data"] for ch in c.logs(job.id)) == f"ran on {job.pool}\n"
        assert done["wide"].pool == pools["ray"].cpi
        assert done["mid"].pool == pools["hpc"].cpi
        assert done["small"].pool == pools["here"].cpi
    r = trio.cnet("ps", "--limit", "10")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line for line in r.stdout.splitlines()[1:] if line.strip()}
    assert pools["ray"].cpi in rows["wide"] and "COMPLETE" in rows["wide"]
    assert pools["hpc"].cpi in rows["mid"] and pools["here"].cpi in rows["small"]


def test_too_big_for_every_engine_is_refused(trio: Network) -> None:
    r = trio.cnet("run", "--cpus", str(RAY_CPUS + 1), "--", "true")
    assert r.returncode == 1
    assert "no pool can ever run it" in r.stderr and "the pool has" in r.stderr
