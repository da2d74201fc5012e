"""The one narrow interface every execution backend implements.

The agent owns the protocol with the node (assignments, reports, logs, retries); a backend
only launches, waits for, and stops work. Logs go to two files in the task's working
directory, which every engine can do (Slurm's --output, Ray's log files, a pod's logs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from computenet.model import JobSpec, JobState, Usage


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


class Backend(ABC):
    name: str

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
    async def abandon(self, workdir: Path) -> str | None:
        """Cleans up what a previous agent process left running in ``workdir``.

        Returns a description of what was stopped, or None when nothing was running.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the backend's own resources; running tasks are left to ``abandon``."""
