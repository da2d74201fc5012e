"""What this machine has, read from the machine itself.

CPUs, memory and disk through psutil; NVIDIA GPUs through NVML (nvidia-ml-py); AMD and
Ascend accelerators through their vendors' SMI tools when those are installed. A probe
that finds nothing of a kind says so in the log; it never invents hardware.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

import psutil

from computenet.model import Device, DeviceKind, Machine

log = logging.getLogger("computenet.agent")


def safe_name(text: str, default: str = "local") -> str:
    """A hostname or model made fit for a CPI segment."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:63].strip("-._")
    return name or default


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return psutil.cpu_count() or 1


def nvidia_devices() -> list[Device]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError when no driver: the normal case on CPU machines
        log.debug("NVML not available: %s", e)
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                arch = f"sm_{major}{minor}"
            except Exception:
                arch = ""
            out.append(
                Device(
                    kind=DeviceKind.gpu,
                    name=f"gpu{i}",
                    index=i,
                    vendor="nvidia",
                    model=name,
                    arch=arch,
                    memory_bytes=int(mem),
                    uuid=uuid,
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return out


def amd_devices() -> list[Device]:
    tool = shutil.which("rocm-smi")
    if not tool:
        return []
    try:
        raw = subprocess.run(
            [tool, "--showproductname", "--showmeminfo", "vram", "--json"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        data = json.loads(raw)
    except (subprocess.SubprocessError, json.JSONDecodeError, OSError) as e:
        log.warning("rocm-smi present but unreadable: %s", e)
        return []
    out = []
    for key, card in sorted(data.items()):
        m = re.match(r"card(\d+)", key)
        if not m or not isinstance(card, dict):
            continue
        i = int(m.group(1))
        model = (
            card.get("Card Series")
            or card.get("Card series")
            or card.get("Card model")
            or "AMD GPU"
        )
        arch = card.get("GFX Version", "")
        mem = int(card.get("VRAM Total Memory (B)", 0) or 0)
        out.append(
            Device(
                kind=DeviceKind.gpu,
                name=f"gpu{i}",
                index=i,
                vendor="amd",
                model=str(model),
                arch=str(arch),
                memory_bytes=mem,
            )
        )
    return out


def ascend_devices() -> list[Device]:
    tool = shutil.which("npu-smi")
    if not tool:
        return []
    try:
        raw = subprocess.run(
            [tool, "info", "-l"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("npu-smi present but unreadable: %s", e)
        return []
    out = []
    for m in re.finditer(r"NPU ID\s*:\s*(\d+).*?Chip Name\s*:\s*(\S+)", raw, re.S):
        i = int(m.group(1))
        out.append(
            Device(
                kind=DeviceKind.npu,
                name=f"npu{i}",
                index=i,
                vendor="huawei",
                model=f"Ascend {m.group(2)}",
                arch=m.group(2).lower(),
            )
        )
    return out


def accelerators() -> list[Device]:
    found = nvidia_devices() + amd_devices() + ascend_devices()
    # One index space per pool: the scheduler hands out indices, the agent maps them back.
    return [d.model_copy(update={"index": i}) for i, d in enumerate(found)]


def probe_machine(name: str | None = None, data_root: Path | None = None) -> Machine:
    host = socket.gethostname()
    arch = platform.machine()
    disk = psutil.disk_usage(str(data_root or Path.home()))
    cpu = Device(
        kind=DeviceKind.cpu,
        name="cpu0",
        index=0,
        vendor=_cpu_vendor(),
        model=cpu_model(),
        arch=arch,
    )
    return Machine(
        name=safe_name(name or host),
        hostname=host,
        os=f"{platform.system()} {platform.release()}",
        arch=arch,
        cpu_model=cpu.model,
        cpus=usable_cpus(),
        memory_bytes=psutil.virtual_memory().total,
        disk_bytes=disk.total,
        devices=[cpu, *accelerators()],
    )


def _cpu_vendor() -> str:
    model = cpu_model().lower()
    for vendor in ("intel", "amd", "ampere", "hygon", "phytium", "kunpeng", "apple"):
        if vendor in model:
            return vendor
    return "arm" if platform.machine() in ("aarch64", "arm64") else "unknown"
