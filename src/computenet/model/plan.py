"""The optimizer table: every pool the scheduler considered for a job, and why."""

from __future__ import annotations

from pydantic import Field

from computenet.model.common import Model


class PlanCandidate(Model):
    pool: str
    region: str
    fits_now: bool
    est_start_s: float = Field(description="seconds until it could start there")
    est_cost: float | None = Field(description="request x price x time limit (1 h if none)")
    currency: str | None = None
    scu: float | None = None
    score: float
    parts: dict[str, float] = Field(description="each score, normalised 0..100")
    raw: dict[str, float | None] = Field(description="each score's own measure")


class PlanRejection(Model):
    pool: str
    reason: str


class Plan(Model):
    goal: str
    choice: str | None = Field(description="where it would run now; None if it would wait")
    decision: str
    candidates: list[PlanCandidate]
    rejected: list[PlanRejection]
