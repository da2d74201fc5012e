"""A throwaway computenet deployment (node + local agent, real processes) for benchmarks."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
CLI = [sys.executable, "-m", "computenet.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Deployment:
    def __init__(self, db_url: str | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="cnet-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url or f"sqlite:///{self.home}/node.db"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.token = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNET_")}
        env.update(CNET_HOME=str(self.home), CNET_URL=self.url)
        return env

    def __enter__(self) -> Deployment:
        log = open(self.home / "node.log", "wb")
        self.procs.append(
            subprocess.Popen(
                [
                    *CLI,
                    "node",
                    "serve",
                    "--port",
                    str(self.port),
                    "--db",
                    self.db_url,
                    "--log-level",
                    "warning",
                ],
                env=self.env(),
                stdout=log,
                stderr=log,
            )
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        creds = json.loads((self.home / "config" / "credentials.json").read_text())
        self.token = creds[self.url]
        alog = open(self.home / "agent.log", "wb")
        self.procs.append(
            subprocess.Popen(
                [
                    *CLI,
                    "agent",
                    "run",
                    "--node",
                    self.url,
                    "--token",
                    self.token,
                    "--state-dir",
                    str(self.home / "agent"),
                    "--log-level",
                    "warning",
                ],
                env=self.env(),
                stdout=alog,
                stderr=alog,
            )
        )
        headers = {"authorization": f"Bearer {self.token}"}
        while not httpx.get(f"{self.url}/v1/pools", headers=headers).json():
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def machine() -> dict[str, Any]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write(name: str, data: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table)
