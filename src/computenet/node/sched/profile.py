"""The default pipeline and the weights behind ``--optimize``."""

from __future__ import annotations

from computenet.node.sched.filters import Capacious, DataReachable, Devices, Pinned, Regions
from computenet.node.sched.framework import Profile, ScorePlugin
from computenet.node.sched.scores.balance import Balance
from computenet.node.sched.scores.carbon import Carbon
from computenet.node.sched.scores.locality import DataLocality
from computenet.node.sched.scores.network import NetworkDistance
from computenet.node.sched.scores.price import Price
from computenet.node.sched.scores.start_time import StartTime

GOALS = ("balanced", "cost", "time", "carbon")

# A goal's main score dominates; the others only break its ties. "balanced" starts work
# soonest, then spreads it, then saves money and carbon.
WEIGHTS: dict[str, dict[str, float]] = {
    "balanced": {
        "start_time": 1.0,
        "locality": 0.5,
        "balance": 0.3,
        "price": 0.2,
        "network": 0.2,
        "carbon": 0.1,
    },
    "cost": {"price": 1.0, "start_time": 0.05, "locality": 0.05, "balance": 0.01},
    "time": {"start_time": 1.0, "locality": 0.1, "network": 0.05, "balance": 0.05, "price": 0.01},
    "carbon": {"carbon": 1.0, "start_time": 0.05, "locality": 0.05, "price": 0.01},
}


def _scores() -> list[ScorePlugin]:
    return [StartTime(), Price(), NetworkDistance(), Balance(), Carbon(), DataLocality()]


SCORES = tuple(s.name for s in _scores())  # what a settings file's weights may name


def default_profile(weights: dict[str, dict[str, float]] | None = None) -> Profile:
    merged = {goal: dict(w) for goal, w in WEIGHTS.items()}
    for goal, w in (weights or {}).items():
        merged.setdefault(goal, {}).update(w)
    return Profile(
        filters=[Pinned(), Regions(), Devices(), Capacious(), DataReachable()],
        scores=_scores(),
        weights=merged,
    )
