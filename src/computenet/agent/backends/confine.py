"""Keeping a local job to what it was granted: its CPU cores and its memory.

Cores: a job of ``c`` CPUs is pinned to ``ceil(c)`` of the agent's cores, the least used
first, so two one-CPU jobs on a two-core pool never share a core while one sits idle.

Memory: where the agent's cgroup (v2) hands the memory controller down to its children,
each job gets a cgroup of its own with ``memory.max`` set, and the kernel's OOM killer
enforces it; elsewhere (cgroup v1 hosts, containers without delegation) the job gets an
``RLIMIT_DATA`` of its request, so an allocation past it fails. Either way, an overrun is
reported as such.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from computenet.model.common import format_bytes

# What programs print when an allocation fails under an rlimit.
_ALLOCATION_FAILED = (
    "MemoryError",
    "Cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
    "Out of memory",
    "OutOfMemoryError",
)


class Cores:
    def __init__(self, allowed: set[int] | None = None) -> None:
        self.allowed = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
        self.load: Counter[int] = Counter()

    def take(self, cpus: float) -> tuple[int, ...]:
        n = min(len(self.allowed), max(1, math.ceil(cpus - 1e-9)))
        picked = sorted(self.allowed, key=lambda c: (self.load[c], c))[:n]
        for c in picked:
            self.load[c] += 1
        return tuple(sorted(picked))

    def give(self, cores: tuple[int, ...]) -> None:
        for c in cores:
            self.load[c] = max(0, self.load[c] - 1)


@dataclass
class Confinement:
    cores: tuple[int, ...]
    memory: int  # bytes; 0: no limit
    cgroup: Path | None = None

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """The calling thread on the job's cores while it starts the job, which inherits
        them: no code between fork and exec, so the child can be started by vfork (a
        fork of the agent, for code to run in, costs it some 6 ms a job)."""
        if not self.cores:
            yield
            return
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.cores)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    def preexec(self, rlimit: bool = True) -> Callable[[], None] | None:
        """What runs in the child between fork and exec (plain system calls only), or
        None where nothing need: joining the job's cgroup, else ``RLIMIT_DATA`` unless
        ``rlimit`` is False (the sandbox's first process sets it for the job alone)."""
        memory = self.memory if rlimit else 0
        procs = str(self.cgroup / "cgroup.procs").encode() if self.cgroup else None
        if procs is None and not memory:
            return None

        def apply() -> None:
            if procs is not None:
                fd = os.open(procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            elif memory:
                resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

        return apply

    def overrun(self, failed: bool, max_rss: int, stderr: Path) -> str | None:
        """Why the job failed, when its memory limit is the reason."""
        if not self.memory:
            return None
        limit = f"memory limit of {format_bytes(self.memory)} exceeded"
        if self.cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                for line in (self.cgroup / "memory.events").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return f"{limit}: killed by the kernel's OOM killer"
            return None
        if not failed:
            return None
        if max_rss >= 0.9 * self.memory:
            return limit
        try:
            with open(stderr, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                tail = f.read().decode(errors="replace")
        except OSError:
            return None
        return (
            f"{limit}: an allocation failed" if any(m in tail for m in _ALLOCATION_FAILED) else None
        )

    def release(self) -> None:
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()


def job_cgroups() -> Path | None:
    """The cgroup (v2) under which jobs can get a memory limit each, or None.

    That is the agent's own cgroup when it hands the memory controller to its children
    (``memory`` in ``cgroup.subtree_control``) and the agent may create children there.
    """
    try:
        own = next(
            line.split("::", 1)[1].strip()
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.startswith("0::")
        )
        mount = next(
            line.split(" - ")[0].split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if " - cgroup2 " in line
        )
    except (OSError, StopIteration, IndexError):
        return None
    here = Path(mount) / own.lstrip("/")
    try:
        delegated = "memory" in (here / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    return here if delegated and os.access(here, os.W_OK) else None


def make_cgroup(parent: Path, name: str, memory: int) -> Path | None:
    path = parent / name
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(memory))
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
        return path
    except OSError:
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
