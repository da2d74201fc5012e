"""A national network in miniature: 20 agents in 4 regions with declared, heterogeneous
inventories (CPU-only pools, several accelerator models, two vendors), a mixed workload,
and the scheduler's goals and fairness on top of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import yaml

from computenet import AsyncClient
from computenet.model import JobState, Pool
from conftest import Network

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

REGIONS = ("cn-north", "cn-east", "cn-south", "cn-west")
ACCELERATORS = [
    ("nvidia", "H100-SXM5-80GB", "sm_90", "80G"),
    ("nvidia", "A100-SXM4-40GB", "sm_80", "40G"),
    ("amd", "Instinct MI300X", "gfx942", "192G"),
    ("amd", "Instinct MI250X", "gfx90a", "128G"),
]


def fleet_spec() -> list[dict[str, Any]]:
    """Pool i: region i % 4; every other pool has accelerators; prices and carbon vary."""
    out = []
    for i in range(20):
        region = REGIONS[i % 4]
        devices = []
        if i % 2:
            vendor, model, arch, mem = ACCELERATORS[(i // 2) % 4]
            devices = [
                {
                    "kind": "gpu",
                    "name": f"gpu{k}",
                    "index": k,
                    "vendor": vendor,
                    "model": model,
                    "arch": arch,
                    "memory_bytes": mem,
                }
                for k in range(2 + i % 3 * 2)
            ]
        out.append(
            {
                "pool": f"p{i:02d}",
                "region": region,
                "carbon_intensity": 50.0 + 37 * i % 500,
                "price": {
                    "cpu_hour": round(0.05 + 0.013 * ((i * 7) % 20), 3),
                    "gpu_hour": round(5 + (i * 3) % 11, 2),
                },
                "machines": [
                    {
                        "name": f"m{i:02d}",
                        "cpus": 4 + (i % 3) * 4,
                        "memory_bytes": "64G",
                        "arch": "aarch64" if i % 5 == 0 else "x86_64",
                        "devices": devices,
                    }
                ],
            }
        )
    return out


@pytest.fixture(scope="module")
def national(shared: Network, tmp_path_factory: pytest.TempPathFactory) -> Network:
    tmp = tmp_path_factory.mktemp("national")
    for spec in fleet_spec():
        path = tmp / f"{spec['pool']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        shared.start_agent(spec["pool"], "--config", str(path), wait=False)
    for spec in fleet_spec():
        shared.wait_pool(spec["pool"], timeout=60)
    return shared


def satisfies(pool: Pool, spec: dict[str, Any]) -> bool:
    r = spec.get("resources", {})
    accel = [d for m in pool.machines for d in m.devices if d.kind.value != "cpu"]
    if len(accel) < r.get("gpus", 0) or pool.capacity.cpus < r.get("cpus", 1):
        return False
    return not spec.get("regions") or pool.region in spec["regions"]


WORKLOAD = [
    {"resources": {"cpus": 1}},
    {"resources": {"cpus": 6}},
    {"resources": {"gpus": 2, "cpus": 1}},
    {"resources": {"gpus": 4, "cpus": 2}},
    {"resources": {"gpus": 6, "cpus": 1}},
    {"resources": {"cpus": 2}, "regions": ["cn-west"]},
    {"resources": {"gpus": 1, "cpus": 1}, "regions": ["cn-north", "cn-west"]},
    {"resources": {"cpus": 1}, "optimize": "cost"},
    {"resources": {"cpus": 1}, "optimize": "carbon"},
    {"resources": {"gpus": 2, "cpus": 1}, "optimize": "cost"},
]


def test_mixed_workload_lands_only_where_it_fits(national: Network) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(national.url, national.token) as c:
            specs = [{"command": ["true"], **WORKLOAD[i % len(WORKLOAD)]} for i in range(200)]
            jobs = await c.submit_many(specs)
            done = await asyncio.gather(*(c.wait(j.id) for j in jobs))
            return list(zip(specs, done, strict=True))

    results = asyncio.run(main())
    with national.client() as c:
        pools = {p.cpi: p for p in c.pools()}
    assert all(job.state is JobState.COMPLETE for _, job in results)
    for spec, job in results:
        assert satisfies(pools[job.pool], spec), (spec, job.pool)
    used = {job.pool for _, job in results}
    assert len(used) >= 10  # the work spread over the network


def test_a_request_no_pool_can_meet_is_refused_with_the_closest_reasons(
    national: Network,
) -> None:
    # Accelerators sit only in the odd pools, which are in cn-east and cn-west.
    r = national.cnet(
        "run", "--gpus", "1", "--region", "cn-north", "--region", "cn-south", "--", "true"
    )
    assert r.returncode == 1 and "no pool can ever run it" in r.stderr
    assert "is not one of cn-north, cn-south" in r.stderr or "needs 1 GPUs" in r.stderr


def test_cost_and_time_goals_across_the_network(national: Network) -> None:
    with national.client() as c:
        pools = [p for p in c.pools() if p.name.startswith("p")]
        gpu_pools = [p for p in pools if p.capacity.gpus >= 2]
        cheapest = min(
            gpu_pools, key=lambda p: p.price.gpu_hour * 2 + p.price.cpu_hour if p.price else 1e9
        )
        job = c.wait(
            c.submit(
                command=["true"], resources={"gpus": 2, "cpus": 1, "time": "10m"}, optimize="cost"
            ).id,
            timeout=60,
        )
        assert job.pool == cheapest.cpi
        # Fill the cheapest pool's accelerators; "time" goes elsewhere at once, "cost" waits.
        hog = c.submit(
            command=["sleep", "30"],
            pool=cheapest.cpi,
            resources={"gpus": cheapest.capacity.gpus, "cpus": 1, "time": "30s"},
        )
        deadline = time.monotonic() + 20
        while c.get(hog.id).state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        fast = c.wait(
            c.submit(
                command=["true"], resources={"gpus": 2, "cpus": 1, "time": "10m"}, optimize="time"
            ).id,
            timeout=60,
        )
        assert fast.state is JobState.COMPLETE and fast.pool != cheapest.cpi
        plan = c.plan(
            command=["true"], resources={"gpus": 2, "cpus": 1, "time": "10m"}, optimize="cost"
        )
        assert plan.candidates[0].pool == cheapest.cpi and not plan.candidates[0].fits_now
        c.cancel(hog.id)
