"""A node's configuration: flags, then ``CNET_*`` environment variables, then defaults."""

from __future__ import annotations

import math
import os
import re
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
        from computenet.model.job import GOAL_PATTERN
        from computenet.node.sched.profile import GOALS, SCORES

        weights = _table(path, "weights", data.get("weights"), "goal", "score")
        latency = _table(path, "latency", data.get("latency"), "region", "region")
        for g in weights:
            if not re.fullmatch(GOAL_PATTERN, g):
                raise ValueError(
                    f"{path}: weights.{g}: a goal's name is 1 to 32 of a-z, 0-9, '_', '-', "
                    "starting with a-z"
                )
        for a in (data.get("region"), *latency, *(b for row in latency.values() for b in row)):
            if a is not None and not (isinstance(a, str) and re.fullmatch(REGION, a)):
                raise ValueError(
                    f"{path}: {a!r} is not a region's name: 1 to 63 of a-z, 0-9 and '-', as "
                    "pools name theirs"
                )
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


REGION = r"[a-z0-9-]{1,63}"


def _table(
    path: Path, key: str, table: object, rows: str, cols: str
) -> dict[str, dict[str, float]]:
    """``{row: {column: number}}``, each number finite and at least 0; what is not is named
    by where it stands."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ValueError(f"{path}: {key} is a mapping {{{rows}: {{{cols}: number}}}}")
    out: dict[str, dict[str, float]] = {}
    for a, row in table.items():
        if not isinstance(row, dict):
            raise ValueError(f"{path}: {key}.{a} is a mapping {{{cols}: number}}")
        out[str(a)] = {}
        for b, v in row.items():
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            if not ok or not math.isfinite(v) or v < 0:  # .inf would rank nothing
                raise ValueError(f"{path}: {key}.{a}.{b} is {v!r}: a finite number of at least 0")
            out[str(a)][str(b)] = float(v)
    return out
