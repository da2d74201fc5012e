"""What discovery answers: one summary per pool, live."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from computenet.model.common import Model
from computenet.model.resources import Capacity, PoolStatus, Price


class AcceleratorGroup(Model):
    kind: str
    vendor: str
    model: str
    arch: str
    memory_bytes: int
    count: int


class PoolSummary(Model):
    cpi: str
    provider: str
    name: str
    region: str
    backend: str
    status: PoolStatus
    labels: dict[str, str]
    capacity: Capacity
    free: Capacity
    accelerators: list[AcceleratorGroup] = Field(default_factory=list)
    cpu_arch: list[str] = Field(default_factory=list)
    price: Price | None = None
    price_per_scu_hour: float | None = None
    carbon_intensity: float | None = None
    scu: float | None = None
    cpu_percent: float | None = None
    running_jobs: int | None = None
    queued_jobs: int | None = Field(default=None, description="waiting in the engine's queue")
    last_heartbeat_at: datetime | None = None


class DiscoverPage(Model):
    items: list[PoolSummary]
    total: int = Field(description="pools that matched, before the limit")
    took_ms: float
