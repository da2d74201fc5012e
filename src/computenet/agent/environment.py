"""The environment a job sees: who it is, what it was given, and nothing of the agent's."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping

from computenet import catalog
from computenet.agent.backends.base import Task
from computenet.model import Device, DeviceKind

# Only these pass through from the agent: its secrets (tokens, keys) must not reach jobs.
PASS_THROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL")


def job_env(task: Task, pool_cpi: str, devices: list[Device]) -> dict[str, str]:
    env = {k: v for k in PASS_THROUGH if (v := os.environ.get(k)) is not None}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    tmp = task.workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    req = task.spec.resources
    threads = str(max(1, math.ceil(req.cpus)))
    env.update(
        HOME=str(task.workdir),
        TMPDIR=str(tmp),
        CNET_JOB_ID=task.job_id,
        CNET_ATTEMPT=str(task.attempt),
        CNET_POOL=pool_cpi,
        CNET_TENANT=task.tenant,
        CNET_CPUS=f"{req.cpus:g}",
        CNET_MEMORY_BYTES=str(req.memory),
        CNET_GPUS=",".join(str(i) for i in task.devices),
        OMP_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
    )
    env.update(device_env(devices, task.devices))
    env.update(task.spec.env)
    return env


def device_env(devices: list[Device], assigned_indices: list[int]) -> dict[str, str]:
    """Exactly the assigned accelerators, in each vendor's own terms, plus a neutral view.

    Every accelerator runtime present on the machine gets its visibility variable, set to
    the assigned devices' indices as that runtime counts them (from 0, among its own), or
    to nothing: a job given no GPU of a vendor must not see that vendor's GPUs. The
    variable comes from the catalog entry the device is (Hygon's DTK reads
    ``HIP_VISIBLE_DEVICES``, Intel's Level Zero ``ZE_AFFINITY_MASK``), or from the vendor.
    ``CNET_DEVICES`` lists the assigned devices as JSON and ``CNET_VENDOR`` their vendors,
    so a program can pick its code path without knowing any vendor's variables.
    """
    accel = [d for d in devices if d.kind is not DeviceKind.cpu]
    assigned = [d for d in accel if d.index in assigned_indices]
    shown: dict[str, list[str]] = {}
    for d in accel:
        shown.setdefault(_visibility_var(d), [])
    for d in assigned:
        shown[_visibility_var(d)].append(str(_local_index(d, devices)))
    env = {var: ",".join(ids) for var, ids in shown.items() if var}
    env["CNET_DEVICES"] = json.dumps(
        [
            {
                "cpi": d.cpi,
                "kind": d.kind.value,
                "vendor": d.vendor,
                "model": d.model,
                "memory_bytes": d.memory_bytes,
                "index": d.index,
                "local_index": _local_index(d, devices),
                "env": _visibility_var(d),
            }
            for d in assigned
        ],
        separators=(",", ":"),
    )
    env["CNET_VENDOR"] = ",".join(sorted({d.vendor for d in assigned}))
    return env


VENDOR_ENV = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "ROCR_VISIBLE_DEVICES",
    "huawei": "ASCEND_RT_VISIBLE_DEVICES",
    "intel": "ZE_AFFINITY_MASK",
    "hygon": "HIP_VISIBLE_DEVICES",
    "cambricon": "MLU_VISIBLE_DEVICES",
    "kunlunxin": "XPU_VISIBLE_DEVICES",
    "moorethreads": "MUSA_VISIBLE_DEVICES",
}
"""For devices the catalog does not know; the catalog's entry decides where it does."""


@functools.cache
def _entry_env(vendor: str, model: str, memory: int) -> str | None:
    entry = catalog.load().identify(vendor, model, memory or None)
    return entry.env[0] if entry is not None and entry.env else None


def _visibility_var(d: Device) -> str:
    return _entry_env(d.vendor, d.model, d.memory_bytes) or VENDOR_ENV.get(d.vendor.lower(), "")


def _local_index(device: Device, devices: list[Device]) -> int:
    """The vendor runtime counts its own devices from 0; the pool counts all of them."""
    same = [d for d in devices if d.vendor == device.vendor and d.kind is device.kind]
    return same.index(device)


VENDOR_RUNTIME = {
    "nvidia": "cuda",
    "amd": "rocm",
    "hygon": "rocm",
    "huawei": "cann",
    "intel": "oneapi",
    "cambricon": "bang",
    "kunlunxin": "xpu",
    "moorethreads": "musa",
}


def runtime(d: Device) -> str:
    entry = catalog.load().identify(d.vendor, d.model, d.memory_bytes or None)
    return entry.runtime.value if entry is not None else VENDOR_RUNTIME.get(d.vendor.lower(), "")


def pick_variant(
    variants: Mapping[str, list[str]],
    command: list[str],
    assigned: list[Device],
    pool: list[Device],
) -> tuple[str, list[str]]:
    """The variant for the runtime of the devices the job was given; with none given, the
    ``cpu`` variant, else one for a runtime this machine has; else the plain command."""
    if not variants:
        return "", command
    wanted = [runtime(d) for d in assigned if d.kind is not DeviceKind.cpu]
    if not wanted:
        wanted = ["cpu", *(runtime(d) for d in pool if d.kind is not DeviceKind.cpu)]
    for rt in wanted:
        if rt in variants:
            return rt, variants[rt]
    return "", command
