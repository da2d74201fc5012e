"""The one narrow interface every execution backend implements.

The agent owns the protocol with the node (assignments, reports, logs, retries); a backend
only launches, waits for, and stops work. Logs go to two files in the task's working
directory, which every engine can do (Slurm's --output, Ray's log files, a pod's logs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from computenet.model import JobSpec, JobState, Machine, TelemetrySample, Usage


class LaunchError(Exception):
    """The work could not start at all (no such program, not executable, ...)."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class Task:
    job_id: str
    attempt: int
    tenant: str
    spec: JobSpec
    devices: list[int]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.job_id}#{self.attempt}"

    @property
    def stdout(self) -> Path:
        return self.workdir / "stdout"

    @property
    def stderr(self) -> Path:
        return self.workdir / "stderr"


@dataclass
class Outcome:
    state: JobState
    exit_code: int | None
    reason: str
    started_at: float
    ended_at: float
    usage: Usage


def format_seconds(s: float) -> str:
    """How a time limit reads in reasons, the same for every backend: ``90s``, ``10m``."""
    return f"{s:g}s" if s < 120 else f"{s / 60:g}m"


class Backend(ABC):
    """Launch, wait, stop, and describe what the pool has. Everything else is the agent's.

    A backend that fronts a cluster (Ray, Slurm) answers ``inventory`` and ``sample`` from
    the cluster's own view; the defaults describe the agent's machine.
    """

    name: str
    # Work that outlives the agent process (a Slurm job) is left running when the agent
    # stops cleanly; its successor adopts it through ``recover``.
    survives_agent: ClassVar[bool] = False
    # An engine with a queue of its own (Slurm) is sent more than it can run at once, as a
    # multiple of its capacity, so that it starts the next job on its own schedule instead
    # of waiting for a round trip to the node. 0 for backends that start what they receive.
    queue_factor: float = 0.0

    async def open(self, state_dir: Path, private: tuple[Path, ...] = ()) -> None:  # noqa: B027
        """Connects to, or starts, the engine; called once before anything else.
        ``private``: directories no job may see (the agent's state, the pool's data root,
        this user's computenet credentials), for a backend that runs jobs beside them."""

    async def inventory(self, state_dir: Path) -> list[Machine]:
        """The machines (with their devices) this pool offers."""
        from computenet.agent.probe import probe_machine

        return [probe_machine(data_root=state_dir)]

    async def sample(self, state_dir: Path, running: int) -> TelemetrySample:
        """Live state for the next heartbeat."""
        from computenet.agent import telemetry

        return telemetry.sample(state_dir, running)

    async def unavailable(self) -> str | None:
        """Why the engine can take no work now (a cluster that does not answer); None
        when it can. Meanwhile the agent sends no heartbeat: the pool turns suspect at
        once (no new work) and offline later (its jobs requeued), and comes back with the
        first heartbeat after the engine does."""
        return None

    @abstractmethod
    async def start(self, task: Task) -> float:
        """Launches the task and returns when it started; raises ``LaunchError``."""

    @abstractmethod
    async def wait(self, task: Task) -> Outcome:
        """Returns when the task has ended, enforcing its time limit on the way."""

    @abstractmethod
    async def stop(self, task: Task, state: JobState, reason: str) -> None:
        """Stops the task and everything it started; ``wait`` then returns ``state``."""

    @abstractmethod
    async def recover(self, task: Task) -> bool:
        """Re-attaches to a task that a previous agent process started.

        True when the task is still known to the engine and ``wait`` will report its end;
        False when it is gone, or cannot be followed and was stopped instead.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the backend's own resources; running tasks are left to ``recover``."""
