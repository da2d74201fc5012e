"""A node's configuration: flags, then ``CNET_*`` environment variables, then defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from computenet import config, yamlfile
from computenet.ident.cpi import check_authority
from computenet.node.store.db import sqlite_url


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class Settings:
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = config.DEFAULT_PORT
    code: str = "local"
    data_dir: Path = field(default_factory=lambda: config.data_dir() / "node")
    heartbeat_interval: float = field(
        default_factory=lambda: _env_float("CNET_HEARTBEAT_INTERVAL", 5.0)
    )
    suspect_after: float = field(default_factory=lambda: _env_float("CNET_SUSPECT_AFTER", 15.0))
    offline_after: float = field(default_factory=lambda: _env_float("CNET_OFFLINE_AFTER", 60.0))
    max_attempts: int = field(default_factory=lambda: int(os.environ.get("CNET_MAX_ATTEMPTS", "3")))
    max_body_bytes: int = 8 * 1024 * 1024
    region: str = ""
    goal: str = "balanced"
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    write_credentials: bool = True

    def __post_init__(self) -> None:
        check_authority(self.code)
        scheduling = os.environ.get("CNET_SCHEDULING")
        if scheduling:
            self.load_scheduling(Path(scheduling))
        if not self.database_url:
            self.database_url = os.environ.get("CNET_DATABASE_URL") or sqlite_url(
                self.data_dir / "computenet.db"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def load_scheduling(self, path: Path) -> None:
        """A YAML file: ``region``, ``goal``, ``weights: {goal: {score: w}}`` and
        ``latency: {region: {region: ms}}`` (the network-distance matrix)."""
        try:
            data = yamlfile.load(path.read_text()) or {}
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        unknown = set(data) - {"region", "goal", "weights", "latency"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        from computenet.node.sched.profile import GOALS, SCORES

        try:
            weights = {
                str(g): {str(k): float(v) for k, v in w.items()}
                for g, w in (data.get("weights") or {}).items()
            }
            latency = {
                str(a): {str(b): float(ms) for b, ms in row.items()}
                for a, row in (data.get("latency") or {}).items()
            }
            numbers = [v for w in (*weights.values(), *latency.values()) for v in w.values()]
            if not all(math.isfinite(v) and v >= 0 for v in numbers):
                raise ValueError("not a finite number of at least 0")  # .inf ranks nothing
        except (AttributeError, TypeError, ValueError):
            raise ValueError(
                f"{path}: weights are {{goal: {{score: number}}}} and latency is "
                "{region: {region: milliseconds}}, each number finite and at least 0"
            ) from None
        goal = str(data.get("goal", self.goal))
        if goal not in (*GOALS, *weights):
            known = ", ".join((*GOALS, *(g for g in weights if g not in GOALS)))
            raise ValueError(f"{path}: goal {goal!r} is none of {known}")
        for g, w in weights.items():
            if extra := sorted(set(w) - set(SCORES)):
                raise ValueError(
                    f"{path}: weights.{g} names no score {', '.join(extra)}; "
                    f"the scores are {', '.join(SCORES)}"
                )
        self.region, self.goal = str(data.get("region", self.region)), goal
        self.weights, self.latency = weights, latency
