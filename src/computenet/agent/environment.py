"""The environment a job sees: who it is, what it was given, and nothing of the agent's."""

from __future__ import annotations

import math
import os

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
    assigned = [d for d in devices if d.kind is not DeviceKind.cpu and d.index in task.devices]
    if any(d.vendor == "nvidia" for d in devices):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(_local_index(d, devices)) for d in assigned if d.vendor == "nvidia"
        )
    env.update(task.spec.env)
    return env


def _local_index(device: Device, devices: list[Device]) -> int:
    """The vendor runtime counts its own devices from 0; the pool counts all of them."""
    same = [d for d in devices if d.vendor == device.vendor and d.kind is device.kind]
    return same.index(device)
