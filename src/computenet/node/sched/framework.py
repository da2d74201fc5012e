"""The scheduling framework's extension points, after the Kubernetes scheduling framework.

A **filter** answers "could this pool ever run this job?" with a reason when it cannot.
A **score** gives each remaining pool a raw value (a price, a latency, a wait); the
framework normalises every score to 0..100 across the candidates (the framework's
NormalizeScore step), weights them by the job's optimisation goal, and ranks. Reserve and
bind are not plugins: they are the one atomic step in ``binder.py``. Adding a policy is one
new module under ``scores/`` or one class in ``filters.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from computenet.model import Capacity, Price
from computenet.model.job import runtime_of

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
    # (index, catalog entry id or "", vendor) per accelerator, and the CPU architectures
    devices: tuple[tuple[int, str, str], ...] = ()
    archs: frozenset[str] = frozenset()

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
    accelerator: str | None = None  # the request's text, as the user wrote it
    accel: frozenset[str] | None = None  # the catalog entries that meet it
    vendors: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()
    variants: frozenset[str] = frozenset()  # runtimes the job has a command for
    inputs: tuple[str, ...] = ()  # data URIs, as in the spec

    @property
    def shape(self) -> tuple[object, ...]:
        r = self.request
        return (
            r.cpus,
            r.memory_bytes,
            r.gpus,
            self.pool,
            self.regions,
            self.time_limit,
            self.optimize,
            self.accelerator,
            self.vendors,
            self.archs,
            self.variants,
            self.inputs,
        )

    def usable(self, pool: PoolView) -> list[int]:
        """The pool's accelerators this job may be given, by catalog entry and vendor."""
        runtimes = runtime_of() if self.variants else {}
        return [
            i
            for i, entry, vendor in pool.devices
            if (self.accel is None or entry in self.accel)
            and (not self.vendors or vendor in self.vendors)
            and (not self.variants or runtimes.get(entry) in self.variants)
        ]

    def usable_groups(self, pool: PoolView) -> list[list[int]]:
        """The usable accelerators as the sets a job may be given together: all of them,
        or for a job with variants, those of one runtime each, since one variant runs and
        sees only its own runtime's devices."""
        usable = self.usable(pool)
        if not self.variants:
            return [usable]
        runtimes, entry_of = runtime_of(), {i: e for i, e, _ in pool.devices}
        groups: dict[str, list[int]] = {}
        for i in usable:
            groups.setdefault(runtimes.get(entry_of[i], ""), []).append(i)
        return list(groups.values())

    @property
    def hours(self) -> float:
        return (self.time_limit or DEFAULT_HOURS * 3600) / 3600


@dataclass
class Context:
    """What scores may ask beyond one pool: estimates that need the whole node's state."""

    start_estimate: Callable[[PoolView, Capacity], float] = lambda pool, req: 0.0
    latency_ms: Callable[[str], float | None] = lambda region: None
    # A data URI's size in bytes and the pools that hold a copy; None: unknown.
    data: Callable[[str], tuple[int, frozenset[str]] | None] = lambda uri: None
    # Bytes a second from one pool to another, as copies between them measured; None:
    # nothing has crossed that link yet.
    link_rate: Callable[[str, str], float | None] = lambda source, destination: None
    # The pools that can serve data now (online); None where the node does not say (at
    # admission, which judges what a pool could ever run, not what it can do now).
    online: frozenset[str] | None = None
    # This node's pools that hold a data URI, whatever their status (none: not known here).
    copies: Callable[[str], frozenset[str]] = lambda uri: frozenset()
    # Within one pass, jobs of the same shape see the same filters and, on pools whose
    # free capacity has not changed, the same raw scores: computed once, looked up after.
    filtered: dict[tuple[object, ...], tuple[list[int], dict[str, str]]] = field(
        default_factory=dict
    )
    raw: dict[tuple[object, ...], list[float]] = field(default_factory=dict)


class FilterPlugin(Protocol):
    name: str

    def filter(self, job: JobView, pool: PoolView, ctx: Context) -> str | None:
        """None when the pool could run the job; otherwise why not, in words for the user."""


class ScorePlugin(Protocol):
    """A score may also set ``resolution``: the least difference in its raw value that
    matters (0 when unset). Candidates closer than that are scored nearly alike, where
    stretching their tiny spread to 0..100 would let it outweigh every other score."""

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
    """Scores in arrays, candidates built only as far as someone reads them: a placement
    usually needs the first one, the optimizer table all of them."""

    job: JobView | None = None
    ctx: Context | None = None
    feasible: list[PoolView] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    raw: npt.NDArray[np.float64] | None = None
    norm: npt.NDArray[np.float64] | None = None
    totals: npt.NDArray[np.float64] | None = None
    fits: npt.NDArray[np.bool_] | None = None
    order: list[int] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.order)

    def ordered(self) -> Iterator[Candidate]:
        for i in self.order:
            yield self._candidate(i)

    @property
    def candidates(self) -> list[Candidate]:
        return list(self.ordered())

    def _candidate(self, i: int) -> Candidate:
        assert self.job is not None and self.ctx is not None
        assert self.raw is not None and self.norm is not None
        assert self.totals is not None and self.fits is not None
        pool, job, fits = self.feasible[i], self.job, bool(self.fits[i])
        r = job.request
        return Candidate(
            pool,
            round(float(self.totals[i]), 3),
            {n: round(float(self.norm[k, i]), 3) for k, n in enumerate(self.names)},
            {
                n: (None if np.isnan(v := self.raw[k, i]) else float(v))
                for k, n in enumerate(self.names)
            },
            fits,
            0.0 if fits else self.ctx.start_estimate(pool, r),
            pool.price.per_hour(r.cpus, r.gpus, r.memory_bytes) * job.hours
            if pool.price is not None
            else None,
        )


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
        return self.weights.get(goal or self.default_goal) or self.weights[self.default_goal]

    def rank(self, job: JobView, pools: list[PoolView], ctx: Context) -> Ranking:
        shape = job.shape
        hit = ctx.filtered.get(shape)
        if hit is None:
            feasible_idx, rejected = [], {}
            for i, pool in enumerate(pools):
                reason = next((r for f in self.filters if (r := f.filter(job, pool, ctx))), None)
                if reason is None:
                    feasible_idx.append(i)
                else:
                    rejected[pool.cpi] = reason
            hit = ctx.filtered[shape] = (feasible_idx, rejected)
        feasible = [pools[i] for i in hit[0]]
        out = Ranking(
            job=job,
            ctx=ctx,
            feasible=feasible,
            rejected=hit[1],
            names=[s.name for s in self.scores],
        )
        if not feasible:
            return out
        raw = np.empty((len(self.scores), len(feasible)))
        for j, pool in enumerate(feasible):
            key = (shape, pool.cpi, pool.free.cpus, pool.free.memory_bytes, pool.free.gpus)
            row = ctx.raw.get(key)
            if row is None:
                row = ctx.raw[key] = [
                    np.nan if (v := s.raw(job, pool, ctx)) is None else v for s in self.scores
                ]
            raw[:, j] = row
        norm = _normalise(
            raw,
            np.array([s.higher_is_better for s in self.scores]),
            np.array([getattr(s, "resolution", 0.0) for s in self.scores]),
        )
        weights = self.goal_weights(job.optimize)
        w = np.array([weights.get(s.name, 0.0) for s in self.scores])
        totals = w @ norm
        fits = np.array([p.fits_now(job.request) for p in feasible])
        orders = np.array([p.order for p in feasible])
        out.raw, out.norm, out.totals, out.fits = raw, norm, totals, fits
        out.order = [int(i) for i in np.lexsort((orders, ~fits, -np.round(totals, 6)))]
        return out


def _normalise(
    raw: npt.NDArray[np.float64],
    higher: npt.NDArray[np.bool_],
    resolution: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Each score to 0..100 across the candidates (best 100), over their spread or the
    score's resolution, whichever is wider; unknown values are neutral."""
    known = ~np.isnan(raw)
    with np.errstate(all="ignore"):
        lo = np.min(np.where(known, raw, np.inf), axis=1, keepdims=True)
        hi = np.max(np.where(known, raw, -np.inf), axis=1, keepdims=True)
        span = hi - lo
        wide = np.maximum(span, resolution[:, None])
        frac = np.where(span > 0, (raw - lo) / np.where(span > 0, wide, 1.0), 1.0)
    score = 100.0 * np.where(higher[:, None], frac, 1.0 - frac)
    score = np.where(span > 0, score, 100.0)
    return np.where(known, score, 50.0)
