"""Weighted fair share between tenants under contention, quotas, and priorities."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from computenet import Client
from computenet.model import JobState
from computenet.sdk import ApiError
from conftest import Network

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(shared: Network, tmp_path_factory: pytest.TempPathFactory) -> str:
    cfg = tmp_path_factory.mktemp("fair") / "eight.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pool": "eight",
                "machines": [{"name": "eight", "cpus": 8, "memory_bytes": "16G"}],
            }
        )
    )
    shared.start_agent("eight", "--config", str(cfg))
    return shared.wait_pool("eight")


def tenant(net: Network, name: str) -> Client:
    with net.client() as admin:
        secret = admin.create_token(name).secret
    return net.client(secret)


def test_weighted_fair_share_under_contention(shared: Network, pool: str) -> None:
    with shared.client() as admin:
        admin.set_tenant("light", weight=1)
        admin.set_tenant("heavy", weight=3)
    light, heavy = tenant(shared, "light"), tenant(shared, "heavy")
    spec = {"command": ["sleep", "0.5"], "resources": {"cpus": 1}, "pool": pool}
    light.submit_many([spec] * 40)
    heavy.submit_many([spec] * 60)
    shares = []
    # There is no preemption: what the light tenant took before the heavy one submitted runs
    # out first. Measure from the second generation of jobs on.
    time.sleep(1.0)
    with shared.client() as admin:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = {x.name: x for x in admin.tenants()}
            queued_l = light.counts().get("QUEUED", 0)
            queued_h = heavy.counts().get("QUEUED", 0)
            if not queued_l or not queued_h:
                break  # contention is over
            held = t["light"].cpus_in_use + t["heavy"].cpus_in_use
            if held >= 6:
                shares.append(t["light"].cpus_in_use / held)
            time.sleep(0.1)
    assert len(shares) >= 10, "contention did not last long enough to measure"
    mean = sum(shares) / len(shares)
    assert abs(mean - 0.25) <= 0.025, f"light held {mean:.3f} of the pool, not 0.25: {shares}"
    for c in (light, heavy):
        c.close()


def test_quota_caps_what_a_tenant_holds(shared: Network, pool: str) -> None:
    with shared.client() as admin:
        admin.set_tenant("capped", weight=1, max_cpus=2)
    capped = tenant(shared, "capped")
    with pytest.raises(ApiError) as info:
        capped.submit(command=["true"], resources={"cpus": 3}, pool=pool)
    assert info.value.status == 409 and info.value.problem.errors[0].field == "resources.cpus"
    jobs = capped.submit_many(
        [{"command": ["sleep", "0.6"], "resources": {"cpus": 1}, "pool": pool}] * 6
    )
    most = 0.0
    with shared.client() as admin:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            held = {t.name: t for t in admin.tenants()}["capped"].cpus_in_use
            most = max(most, held)
            if all(capped.get(j.id).state.terminal for j in jobs):
                break
            time.sleep(0.1)
    assert most == 2
    assert all(capped.get(j.id).state is JobState.COMPLETE for j in jobs)
    r = shared.cnet("tenant", "list")
    assert r.returncode == 0 and "capped" in r.stdout
    capped.close()


def test_priority_orders_a_tenants_own_queue(shared: Network, pool: str) -> None:
    c = tenant(shared, "prio")
    blocker = c.submit(command=["sleep", "2"], resources={"cpus": 8}, pool=pool)
    low = c.submit(command=["true"], resources={"cpus": 8}, pool=pool, priority=-5)
    high = c.submit(command=["true"], resources={"cpus": 8}, pool=pool, priority=5)
    done_low, done_high = c.wait(low.id, timeout=60), c.wait(high.id, timeout=60)
    assert done_high.started_at is not None and done_low.started_at is not None
    assert done_high.started_at < done_low.started_at
    assert c.get(blocker.id).state is JobState.COMPLETE
    c.close()


def test_tenant_policy_needs_admin(shared: Network, tmp_path: Path) -> None:
    c = tenant(shared, "sneaky")
    with pytest.raises(ApiError) as info:
        c.set_tenant("sneaky", weight=100)
    assert info.value.status == 403
    c.close()
