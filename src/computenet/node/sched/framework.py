"""The scheduling framework's extension points, after the Kubernetes scheduling framework.

A filter answers "can this pool run this job at all, now?" with a reason when it cannot; a
score ranks the pools that pass. Reserve and bind are not plugins: they are the one atomic
step in ``binder.py`` that makes a placement real. Adding a policy is one new plugin class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from computenet.model import Capacity


@dataclass(slots=True)
class PoolView:
    """What the scheduler knows of a pool during one pass; ``free`` shrinks as it places."""

    cpi: str
    region: str
    labels: dict[str, str]
    capacity: Capacity
    free: Capacity
    order: int


@dataclass(slots=True)
class JobView:
    id: str
    tenant: str
    request: Capacity
    pool: str | None
    priority: int
    created_at: float


class FilterPlugin(Protocol):
    name: str

    def filter(self, job: JobView, pool: PoolView) -> str | None:
        """None when the pool can take the job; otherwise why not, in words for the user."""


class ScorePlugin(Protocol):
    name: str

    def score(self, job: JobView, pool: PoolView) -> float:
        """0 (worst) to 100 (best)."""


@dataclass
class Ranking:
    ranked: list[tuple[PoolView, float, dict[str, float]]] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class Profile:
    """One configuration of the pipeline: which filters, which scores, with which weights."""

    filters: list[FilterPlugin]
    scores: list[tuple[ScorePlugin, float]]

    def rank(self, job: JobView, pools: list[PoolView]) -> Ranking:
        out = Ranking()
        for pool in pools:
            reason = next((r for f in self.filters if (r := f.filter(job, pool))), None)
            if reason is not None:
                out.rejected[pool.cpi] = reason
                continue
            parts = {s.name: s.score(job, pool) for s, _ in self.scores}
            total = sum(parts[s.name] * w for s, w in self.scores)
            out.ranked.append((pool, total, parts))
        out.ranked.sort(key=lambda t: (-t[1], t[0].order))
        return out
