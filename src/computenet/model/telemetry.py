"""Live state that agents stream to their node."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from computenet.model.common import INT64, Model

Percent = Annotated[float, Field(ge=0, le=100_000)]


class DeviceSample(Model):
    index: int = Field(ge=0, le=INT64)
    utilization_percent: Percent | None = None
    memory_used_bytes: int | None = Field(default=None, ge=0, le=INT64)
    memory_total_bytes: int | None = Field(default=None, ge=0, le=INT64)
    power_watts: float | None = Field(default=None, ge=0)
    temperature_c: float | None = None


class TelemetrySample(Model):
    time: float
    cpu_percent: Percent
    load_1m: float = Field(ge=0)
    memory_used_bytes: int = Field(ge=0, le=INT64)
    memory_total_bytes: int = Field(ge=0, le=INT64)
    disk_used_bytes: int = Field(default=0, ge=0, le=INT64)
    disk_total_bytes: int = Field(default=0, ge=0, le=INT64)
    devices: list[DeviceSample] = Field(default_factory=list, max_length=4096)
    running_jobs: int = Field(default=0, ge=0, le=INT64)
    queued_jobs: int = Field(
        default=0,
        ge=0,
        le=INT64,
        description="jobs waiting in the engine's own queue, other users' included (Slurm)",
    )
    free_cpus: float | None = Field(
        default=None,
        ge=0,
        description="CPUs the engine has not handed out, other users' work included",
    )


class Heartbeat(Model):
    """Signed by the pool key; ``seq`` only grows, so a captured heartbeat cannot be replayed."""

    seq: int = Field(ge=1, le=INT64)
    sent_at: float
    sample: TelemetrySample
    running: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=100_000
    )
