"""Real processes for real tests: a node (``cnet node serve``) and agents (``cnet agent run``)
on loopback ports, on SQLite and on PostgreSQL.

PostgreSQL is expected at ``CNET_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/test);
each node gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from computenet import Client
from computenet.config import load_credentials

PG_ADMIN = os.environ.get("CNET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PYTHON = [sys.executable, "-m", "computenet.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is required for these tests and is not reachable at {PG_ADMIN}: {e}"
        )


def _pg_database() -> Iterator[str]:
    name = f"cnet_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/node.db"
    else:
        yield from _pg_database()


@dataclass
class Proc:
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.popen = subprocess.Popen(
            self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        p = self.popen
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            return p.wait()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Network:
    """One node and its agents, each a real process, sharing a CNET_HOME."""

    home: Path
    db_url: str
    port: int = field(default_factory=free_port)
    node: Proc | None = None
    agents: dict[str, Proc] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None  # a replica shares its database's tokens

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNET_")}
        env.update(
            CNET_HOME=str(self.home),
            CNET_URL=self.url,
            CNET_SUSPECT_AFTER="6",
            CNET_OFFLINE_AFTER="20",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.overrides)
        return env

    @property
    def token(self) -> str:
        return self.admin_token or load_credentials_at(self.home)[self.url]

    def start_node(self) -> None:
        self.node = Proc(
            [
                *PYTHON,
                "node",
                "serve",
                "--port",
                str(self.port),
                "--db",
                self.db_url,
                "--log-level",
                "info",
            ],
            self.env,
            self.home / "node.log",
        )
        self.node.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.node.popen is not None
            if self.node.popen.poll() is not None:
                raise RuntimeError(f"node exited:\n{self.node.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"node did not start:\n{self.node.output()}")

    def start_agent(self, name: str = "alpha", *extra: str, wait: bool = True) -> Proc:
        agent = Proc(
            [
                *PYTHON,
                "agent",
                "run",
                "--node",
                self.url,
                "--token",
                self.token,
                "--pool",
                name,
                "--state-dir",
                str(self.home / "agents" / name),
                "--heartbeat",
                "1",
                "--log-level",
                "info",
                *extra,
            ],
            self.env,
            self.home / f"agent-{name}.log",
        )
        agent.start()
        self.agents[name] = agent
        if wait:
            self.wait_pool(name)
        return agent

    def wait_pool(self, name: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                for p in c.pools():
                    if p.name == name and p.status.value == "online":
                        return p.cpi
                time.sleep(0.1)
        raise RuntimeError(f"pool {name} did not come online:\n{self.agents[name].output()}")

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.token)

    def cnet(
        self, *args: str, token: str | None = None, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if token:
            env["CNET_TOKEN"] = token
        return subprocess.run(
            [*PYTHON, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def stop(self) -> None:
        for a in self.agents.values():
            a.stop()
        if self.node is not None:
            self.node.stop()


def load_credentials_at(home: Path) -> dict[str, str]:
    old = os.environ.get("CNET_HOME")
    os.environ["CNET_HOME"] = str(home)
    try:
        return load_credentials()
    finally:
        if old is None:
            del os.environ["CNET_HOME"]
        else:
            os.environ["CNET_HOME"] = old


DATABASES = ["sqlite", "postgresql"]


def _network(kind: str, tmp: Path, request: pytest.FixtureRequest) -> Iterator[Network]:
    if kind == "postgresql":
        request.getfixturevalue("pg_available")
    for url in database_url(kind, tmp):
        net = Network(tmp / "home", url)
        try:
            net.start_node()
            yield net
        finally:
            net.stop()
            if request.session.testsfailed:
                for name, p in [("node", net.node), *net.agents.items()]:
                    if p is not None:
                        sys.stderr.write(f"--- {name} log ---\n{p.output()[-4000:]}\n")


@pytest.fixture(scope="module", params=DATABASES)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """A node with one agent, shared by the tests of a module (per database)."""
    tmp = tmp_path_factory.mktemp(f"net-{request.param}")
    for net in _network(request.param, tmp, request):
        net.start_agent("alpha")
        yield net


@pytest.fixture(params=DATABASES)
def network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Network]:
    """A fresh node without agents, for tests that restart or break things."""
    yield from _network(request.param, tmp_path, request)


def slurm_cluster(cpus: int) -> Iterator[Any]:
    """A throwaway single-node Slurm for a module's tests (skipped, loudly, only where
    Slurm cannot run at all)."""
    from bench.peers.slurm import SlurmCluster, available

    reason = available()
    if reason is not None:
        pytest.skip(f"Slurm cannot run here: {reason}")
    cluster = SlurmCluster(cpus=cpus)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def held_open(copy: subprocess.Popen[str], what: str, timeout: float = 60) -> None:
    """Waits for a copy run with a ``stop`` fault to stop itself (SIGSTOP) at its chunk."""
    held = psutil.Process(copy.pid)
    deadline = time.monotonic() + timeout
    while held.status() != psutil.STATUS_STOPPED:
        assert copy.poll() is None, copy.communicate()[1]
        assert time.monotonic() < deadline, f"the copy never reached {what}"
        time.sleep(0.05)


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """Raw connections a test opens to a data server, closed after it whatever happened."""
    opened: list[Any] = []
    yield opened
    for p in opened:
        p.close()


def procs_with(marker: str) -> list[psutil.Process]:
    """Processes whose command line contains ``marker``: how a test finds a job's tree."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
    return out
