"""A job finds its accelerators in its vendor's own terms, and in neutral ones: pools with
declared NVIDIA, AMD and Ascend devices, one job each, reading its environment."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from computenet.model import JobSpec, JobState
from computenet.sdk import ApiError
from conftest import Network

pytestmark = pytest.mark.slow

POOLS = {
    # name: vendor, kind, model, memory, the variable its runtime reads
    "dev-nvidia": ("nvidia", "gpu", "NVIDIA H100 80GB HBM3", "80G", "CUDA_VISIBLE_DEVICES"),
    "dev-amd": ("amd", "gpu", "AMD Instinct MI300X", "192G", "ROCR_VISIBLE_DEVICES"),
    "dev-ascend": ("huawei", "npu", "Ascend 910B", "64G", "ASCEND_RT_VISIBLE_DEVICES"),
}
SHOW = (
    "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
    "['CUDA_VISIBLE_DEVICES', 'ROCR_VISIBLE_DEVICES', 'HIP_VISIBLE_DEVICES', "
    "'ASCEND_RT_VISIBLE_DEVICES', 'CNET_DEVICES', 'CNET_VENDOR', 'CNET_GPUS']}))"
)


def _config(tmp: Path, name: str) -> Path:
    vendor, kind, model, memory, _ = POOLS[name]
    devices = [
        {"kind": kind, "name": f"{kind}{i}", "index": i, "vendor": vendor, "model": model,
         "memory_bytes": memory}
        for i in range(3)
    ]  # fmt: skip
    path = tmp / f"{name}.yaml"
    machine = {"name": name, "cpus": 2, "memory_bytes": "8G", "devices": devices}
    path.write_text(yaml.safe_dump({"pool": name, "machines": [machine]}))
    return path


@pytest.fixture(scope="module")
def pools(shared: Network, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("devices")
    for name in POOLS:
        shared.start_agent(name, "--config", str(_config(tmp, name)))
    with shared.client() as c:
        return {p.name: p.cpi for p in c.pools() if p.name in POOLS}


@pytest.mark.parametrize("name", list(POOLS))
def test_job_sees_its_devices_in_its_vendors_terms(
    shared: Network, pools: dict[str, str], name: str
) -> None:
    vendor, _, model, _, var = POOLS[name]
    with shared.client() as c:
        hold = c.submit(command=["sleep", "30"], pool=pools[name], resources={"gpus": 1})
        try:
            job = c.submit(command=["python3", "-c", SHOW], pool=pools[name], resources={"gpus": 2})
            done = c.wait(job.id, timeout=60)
            assert done.state is JobState.COMPLETE, done.reason
            env = json.loads("".join(ch["data"] for ch in c.logs(job.id)))
        finally:
            c.cancel(hold.id)
    # Device 0 is held by the first job: this one has devices 1 and 2, as the runtime counts.
    assert env["CNET_GPUS"] == "1,2"
    assert env[var] == "1,2"
    others = {k for k in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES") if k != var}
    assert all(env[k] is None for k in others), env  # no other vendor's devices here
    assert env["HIP_VISIBLE_DEVICES"] is None  # ROCR already filters; both would hide GPUs
    assert env["CNET_VENDOR"] == vendor
    listed = json.loads(env["CNET_DEVICES"])
    assert [(d["index"], d["local_index"], d["vendor"], d["model"]) for d in listed] == [
        (1, 1, vendor, model),
        (2, 2, vendor, model),
    ]
    assert all(d["cpi"].startswith(pools[name] + "/") and d["env"] == var for d in listed)


def test_cpu_job_sees_no_accelerator(shared: Network, pools: dict[str, str]) -> None:
    with shared.client() as c:
        job = c.submit(command=["python3", "-c", SHOW], pool=pools["dev-nvidia"])
        done = c.wait(job.id, timeout=60)
        assert done.state is JobState.COMPLETE, done.reason
        env = json.loads("".join(ch["data"] for ch in c.logs(job.id)))
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # visible: none
    assert env["CNET_VENDOR"] == "" and json.loads(env["CNET_DEVICES"]) == []


ANY_VENDOR = "bf16>=300T,mem>=64G"


@pytest.mark.parametrize("name", list(POOLS))
def test_one_neutral_request_lands_on_every_vendor(
    shared: Network, pools: dict[str, str], name: str
) -> None:
    """The same --accelerator request runs on NVIDIA, AMD and Ascend pools alike, and the
    program finds its device through its vendor's variable and CNET_DEVICES."""
    vendor, _, model, _, var = POOLS[name]
    r = shared.cnet(
        "run", "--pool", pools[name], "--accelerator", ANY_VENDOR, "--", "python3", "-c", SHOW,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    listed = json.loads(env["CNET_DEVICES"])
    assert len(listed) == 1 and listed[0]["vendor"] == vendor and listed[0]["model"] == model
    assert env[var] == str(listed[0]["local_index"]) and env["CNET_VENDOR"] == vendor


def test_named_and_class_requests_find_their_pool(shared: Network, pools: dict[str, str]) -> None:
    with shared.client() as c:
        for text, pool in (("MI300X:2", "dev-amd"), ("H100", "dev-nvidia"), ("910B", "dev-ascend")):
            plan = c.plan(JobSpec(command=["true"], resources={"accelerator": text}))
            assert [x.pool for x in plan.candidates] == [pools[pool]], text
        plan = c.plan(JobSpec(command=["true"], resources={"gpus": 1, "vendor": ["amd"]}))
        assert [x.pool for x in plan.candidates] == [pools["dev-amd"]]
        job = c.submit(command=["true"], resources={"accelerator": "A100+:2"})
        done = c.wait(job.id, timeout=60)  # an H100 is an A100 or better
        assert done.state is JobState.COMPLETE and done.pool == pools["dev-nvidia"]


def test_requests_nothing_can_meet_are_refused_with_the_closest(
    shared: Network, pools: dict[str, str]
) -> None:
    r = shared.cnet("run", "--accelerator", "bf16>=100000T", "--", "true")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "resources.accelerator" in r.stderr and "closest: nvidia-b200" in r.stderr
    with shared.client() as c:
        with pytest.raises(ApiError) as e:
            c.submit(command=["true"], resources={"accelerator": "Z9000"})
        assert e.value.status == 422 and "knows no 'Z9000'" in str(e.value)
        with pytest.raises(ApiError) as e:  # in the catalog, but no pool has one
            c.submit(command=["true"], resources={"accelerator": "B200"})
        assert e.value.status == 409 and "B200" in str(e.value)
        with pytest.raises(ApiError) as e:
            c.submit(command=["true"], resources={"gpus": 1, "arch": ["riscv64"]})
        assert e.value.status == 409 and "riscv64" in str(e.value)
    bad = httpx.post(
        f"{shared.url}/v1/jobs",
        json={"command": ["true"], "resources": {"accelerator": "mem>=lots"}},
        headers={"authorization": f"Bearer {shared.token}"},
    )
    assert bad.status_code == 422 and "resources.accelerator" in bad.text


VARIANT = "import os; print(os.environ.get('CNET_RUNTIME'), os.environ['{var}'])"


def test_the_variant_for_the_assigned_devices_runs(shared: Network, pools: dict[str, str]) -> None:
    """One job with a command per runtime: each vendor's pool runs its own variant."""
    variants = {
        "cuda": ["python3", "-c", VARIANT.format(var="CUDA_VISIBLE_DEVICES")],
        "rocm": ["python3", "-c", VARIANT.format(var="ROCR_VISIBLE_DEVICES")],
        "cann": ["python3", "-c", VARIANT.format(var="ASCEND_RT_VISIBLE_DEVICES")],
    }
    seen = {}
    with shared.client() as c:
        for name, runtime in (("dev-nvidia", "cuda"), ("dev-amd", "rocm"), ("dev-ascend", "cann")):
            job = c.submit(
                command=["false"], variants=variants, pool=pools[name], resources={"gpus": 1}
            )
            done = c.wait(job.id, timeout=60)
            assert done.state is JobState.COMPLETE, done.reason
            seen[runtime] = "".join(ch["data"] for ch in c.logs(job.id)).split()
        # Unpinned, a cuda-only job goes only where CUDA is.
        only = c.submit(
            command=["false"], variants={"cuda": variants["cuda"]}, resources={"gpus": 1}
        )
        assert c.wait(only.id, timeout=60).pool == pools["dev-nvidia"]
    assert {rt: out[0] for rt, out in seen.items()} == {
        "cuda": "cuda",
        "rocm": "rocm",
        "cann": "cann",
    }


def test_a_variant_no_pool_offers_is_refused(shared: Network, pools: dict[str, str]) -> None:
    with shared.client() as c:
        with pytest.raises(ApiError) as e:
            c.submit(command=["true"], variants={"musa": ["true"]})
        assert e.value.status == 409
        assert "variants for musa" in str(e.value) and "offers the runtimes" in str(e.value)
    r = shared.cnet("run", "--pool", pools["dev-amd"], "--", "true")
    assert r.returncode == 0  # without variants, the command runs anywhere


def test_a_job_with_variants_gets_devices_of_one_runtime(
    shared: Network, pools: dict[str, str], tmp_path: Path
) -> None:
    """On a pool of two H100s and an MI300X, three devices for a cuda/rocm job were
    given across both runtimes, and the CUDA program saw two of its three."""
    h100 = {
        "kind": "gpu",
        "vendor": "nvidia",
        "model": "NVIDIA H100 80GB HBM3",
        "memory_bytes": "80G",
    }
    mi300 = {"kind": "gpu", "vendor": "amd", "model": "AMD Instinct MI300X", "memory_bytes": "192G"}
    devices = [
        {**h100, "name": "gpu0", "index": 0},
        {**h100, "name": "gpu1", "index": 1},
        {**mi300, "name": "gpu2", "index": 2},
    ]
    path = tmp_path / "mixed.yaml"
    machine = {"name": "mixed", "cpus": 2, "memory_bytes": "8G", "devices": devices}
    path.write_text(yaml.safe_dump({"pool": "dev-mixed", "machines": [machine]}))
    if "dev-mixed" not in shared.agents:
        shared.start_agent("dev-mixed", "--config", str(path))
    mixed = shared.wait_pool("dev-mixed")
    show = ["python3", "-c", VARIANT.format(var="CUDA_VISIBLE_DEVICES")]
    variants = {"cuda": show, "rocm": ["python3", "-c", VARIANT.format(var="ROCR_VISIBLE_DEVICES")]}
    with shared.client() as c:
        with pytest.raises(ApiError) as e:
            c.submit(command=["false"], variants=variants, pool=mixed, resources={"gpus": 3})
        assert e.value.status == 409 and "device(s) of one runtime, needs 3" in str(e.value)
        job = c.submit(command=["false"], variants=variants, pool=mixed, resources={"gpus": 2})
        done = c.wait(job.id, timeout=60)
        assert done.state is JobState.COMPLETE, done.reason
        assert "".join(ch["data"] for ch in c.logs(job.id)).split() == ["cuda", "0,1"]
