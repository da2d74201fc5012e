"""What one attempt consumed: reported by the agent, priced by the node."""

from __future__ import annotations

from pydantic import Field

from computenet.model.common import INT64, Model


class Usage(Model):
    wall_seconds: float = Field(ge=0)
    cpu_seconds: float = Field(default=0, ge=0)
    max_rss_bytes: int = Field(default=0, ge=0, le=INT64)


class UsageRecord(Usage):
    job_id: str
    attempt: int
    tenant: str
    pool: str
    cpus: float
    memory_bytes: int
    gpus: int
    started_at: float
    ended_at: float
