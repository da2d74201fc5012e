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
from collections.abc import Sequence
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
    """A node and one agent. ``agent_args`` are appended to ``cnet agent run`` (e.g.
    ``--backend slurm -o conf=...``), so one harness serves every backend; the agent gets
    ``ready_timeout`` seconds to register, since a cluster-fronting one may start an engine."""

    def __init__(
        self,
        db_url: str | None = None,
        agent_args: Sequence[str] = (),
        ready_timeout: float = 300.0,
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="cnet-bench-"))
        self.agent_args = list(agent_args)
        self.ready_timeout = ready_timeout
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
        try:
            self._start()
        except BaseException:
            self.__exit__()  # a failed start must not leave a node or agent running
            raise
        return self

    def _start(self) -> None:
        self.procs.append(
            self._spawn(
                "node.log",
                ["node", "serve", "--port", str(self.port), "--db", self.db_url],
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
        self.procs.append(
            self._spawn(
                "agent.log",
                [
                    "agent",
                    "run",
                    "--node",
                    self.url,
                    "--token",
                    self.token,
                    "--state-dir",
                    str(self.home / "agent"),
                    *self.agent_args,
                ],
            )
        )
        headers = {"authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + self.ready_timeout
        while not httpx.get(f"{self.url}/v1/pools", headers=headers).json():
            self._check_agent(deadline)
            time.sleep(0.1)

    def _spawn(self, log_name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.home / log_name, "wb") as log:
            return subprocess.Popen(
                [*CLI, *args, "--log-level", "warning"],
                env=self.env(),
                stdout=log,
                stderr=log,
            )

    def _check_agent(self, deadline: float) -> None:
        """An agent that exits or never registers would otherwise leave the wait spinning
        for ever; its log says why."""
        agent = self.procs[-1]
        if agent.poll() is None and time.monotonic() < deadline:
            return
        why = "exited" if agent.poll() is not None else "did not register in time"
        tail = (self.home / "agent.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the agent {why}:\n{tail}")

    def pool(self, timeout: float = 120.0) -> str:
        """The CPI of the agent's pool once it is online, to pin jobs to it."""
        headers = {"authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + timeout
        while True:
            for p in httpx.get(f"{self.url}/v1/pools", headers=headers).json():
                if p.get("status") == "online":
                    return str(p["cpi"])
            self._check_agent(deadline)
            time.sleep(0.1)

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
