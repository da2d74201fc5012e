"""The scheduling framework's extension points, after the Kubernetes scheduling framework.

A **filter** answers "could this pool ever run this job?" with a reason when it cannot.
A **score** gives each remaining pool a raw value (a price, a latency, a wait); the
framework normalises every score to 0..100 across the candidates (the framework's
NormalizeScore step), weights them by the job's optimisation goal, and ranks. Reserve and
bind are not plugins: they are the one atomic step in ``binder.py``. Adding a policy is one
new module under ``scores/`` or one class in ``filters.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from computenet.model import Capacity, Price

DEFAULT_HOURS = 1.0  # what a job without a time limit is assumed to run, for estimates


@dataclass(slots=True)
class PoolView:
    """What the scheduler knows of a pool during one pass; ``free`` shrinks as it places."""

    cpi: str
    region: str
    labels: dict[str, str]
    capacity: Capacity
    free: Capacity
    order: int
    price: Price | None = None
    carbon: float | None = None
    scu: float | None = None

    def fits_now(self, request: Capacity) -> bool:
        return self.free.fits(request)


@dataclass(slots=True)
class JobView:
    id: str
    tenant: str
    request: Capacity
    pool: str | None
    priority: int
    created_at: float
    time_limit: float | None = None
    optimize: str | None = None
    regions: tuple[str, ...] = ()

    @property
    def hours(self) -> float:
        return (self.time_limit or DEFAULT_HOURS * 3600) / 3600


@dataclass
class Context:
    """What scores may ask beyond one pool: estimates that need the whole node's state."""

    start_estimate: Callable[[PoolView, Capacity], float] = lambda pool, req: 0.0
    latency_ms: Callable[[str], float | None] = lambda region: None


class FilterPlugin(Protocol):
    name: str

    def filter(self, job: JobView, pool: PoolView) -> str | None:
        """None when the pool could run the job; otherwise why not, in words for the user."""


class ScorePlugin(Protocol):
    name: str
    higher_is_better: bool

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        """The plugin's own measure; None when it cannot tell (scored as neutral)."""


@dataclass
class Candidate:
    pool: PoolView
    total: float
    parts: dict[str, float]
    raw: dict[str, float | None]
    fits_now: bool
    est_start_s: float
    est_cost: float | None


@dataclass
class Ranking:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class Profile:
    """Filters, scores, and the weights each optimisation goal gives the scores."""

    filters: list[FilterPlugin]
    scores: list[ScorePlugin]
    weights: dict[str, dict[str, float]]
    default_goal: str = "balanced"
    region: str = ""
    latency: dict[str, dict[str, float]] = field(default_factory=dict)

    def latency_ms(self, region: str) -> float | None:
        """From this node's region to ``region``, as configured; 0 within a region."""
        if not self.region or not region:
            return None
        if region == self.region:
            return 0.0
        row = self.latency.get(self.region, {})
        back = self.latency.get(region, {})
        return row.get(region, back.get(self.region))

    def goal_weights(self, goal: str | None) -> dict[str, float]:
        return self.weights.get(goal or self.default_goal, self.weights[self.default_goal])

    def rank(self, job: JobView, pools: list[PoolView], ctx: Context) -> Ranking:
        out = Ranking()
        feasible = []
        for pool in pools:
            reason = next((r for f in self.filters if (r := f.filter(job, pool))), None)
            if reason is not None:
                out.rejected[pool.cpi] = reason
            else:
                feasible.append(pool)
        if not feasible:
            return out
        raw = {s.name: [s.raw(job, p, ctx) for p in feasible] for s in self.scores}
        norm = {s.name: _normalise(raw[s.name], s.higher_is_better) for s in self.scores}
        weights = self.goal_weights(job.optimize)
        for i, pool in enumerate(feasible):
            parts = {name: norm[name][i] for name in norm}
            total = sum(parts[n] * weights.get(n, 0.0) for n in parts)
            est_cost = (
                pool.price.per_hour(job.request.cpus, job.request.gpus, job.request.memory_bytes)
                * job.hours
                if pool.price is not None
                else None
            )
            fits = pool.fits_now(job.request)
            out.candidates.append(
                Candidate(
                    pool,
                    round(total, 3),
                    parts,
                    {n: raw[n][i] for n in raw},
                    fits,
                    0.0 if fits else ctx.start_estimate(pool, job.request),
                    est_cost,
                )
            )
        out.candidates.sort(key=lambda c: (-c.total, not c.fits_now, c.pool.order))
        return out


def _normalise(values: list[float | None], higher_is_better: bool) -> list[float]:
    known = [v for v in values if v is not None]
    if not known:
        return [50.0] * len(values)
    lo, hi = min(known), max(known)
    out = []
    for v in values:
        if v is None:
            out.append(50.0)
        elif hi == lo:
            out.append(100.0)
        else:
            frac = (v - lo) / (hi - lo)
            out.append(round(100.0 * (frac if higher_is_better else 1 - frac), 3))
    return out
