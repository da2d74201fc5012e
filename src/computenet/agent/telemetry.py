"""Live samples of the machine, for heartbeats."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import psutil

from computenet.model import DeviceSample, TelemetrySample

log = logging.getLogger("computenet.agent")


def _nvidia_samples() -> list[DeviceSample]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                power = pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception:
                power = None
            try:
                temp = float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
            except Exception:
                temp = None
            out.append(
                DeviceSample(
                    index=i,
                    utilization_percent=float(util.gpu),
                    memory_used_bytes=mem.used,
                    memory_total_bytes=mem.total,
                    power_watts=power,
                    temperature_c=temp,
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return out


def sample(data_root: Path, running_jobs: int) -> TelemetrySample:
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(str(data_root))
    return TelemetrySample(
        time=time.time(),
        cpu_percent=psutil.cpu_percent(interval=None),
        load_1m=os.getloadavg()[0],
        memory_used_bytes=vm.total - vm.available,
        memory_total_bytes=vm.total,
        disk_used_bytes=disk.used,
        disk_total_bytes=disk.total,
        devices=_nvidia_samples(),
        running_jobs=running_jobs,
    )
