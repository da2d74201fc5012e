"""Keeping a local job out of what belongs to computenet on the machine.

A job on the local backend runs as the agent's user. Without more it could read what that
user can: the computenet credentials in the user's config (an admin token, on a machine
set up by ``cnet up``), the agent's state (its key, other jobs' directories and outputs)
and the pool's data root, every tenant's home included. bubblewrap (``bwrap``) runs each
job in namespaces of its own, in which the machine's file system is as it is except that
those directories are empty and read-only, the job's own directory is in place, and
``/proc`` shows the job's own processes only: with the host's, another process of the
same user would show the whole file system under ``/proc/PID/root``.

The job's exit status passes through; a job killed by signal N exits 128 + N, as under a
shell.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


class SandboxError(RuntimeError):
    """The sandbox was asked for and cannot be had here."""


@dataclass(frozen=True)
class Sandbox:
    bwrap: str
    private: tuple[Path, ...]

    def wrap(self, argv: list[str], workdir: Path) -> list[str]:
        """``argv`` run by bwrap; what to hide is looked up now, so that a directory made
        since the agent started (the user's first ``cnet login``) is hidden too."""
        dirs = hidden(self.private)
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--dev-bind", "/", "/"]
        args += ["--proc", "/proc"]
        for d in dirs:
            args += ["--tmpfs", str(d)]
        args += ["--bind", str(workdir), str(workdir)]
        for d in dirs:
            args += ["--remount-ro", str(d)]
        return [*args, "--chdir", str(workdir), "--", *argv]


def hidden(paths: Iterable[Path]) -> tuple[Path, ...]:
    """The directories to hide: those that exist, outermost only (an inner one is hidden
    with its parent)."""
    real = sorted({p.resolve() for p in paths if p.is_dir()}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in real:
        if p != Path("/") and not any(p.is_relative_to(q) for q in out):
            out.append(p)
    return tuple(out)


def make(mode: str, private: Iterable[Path]) -> Sandbox | None:
    """The sandbox for ``mode``: ``on`` needs one, ``auto`` takes one where bwrap works
    here and says loudly where it does not, ``off`` runs jobs as they are."""
    if mode not in MODES:
        raise SandboxError(f"sandbox={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return None
    box = Sandbox(shutil.which("bwrap") or "", tuple(private))
    why = _unusable(box)
    if why is None:
        return box
    if mode == "on":
        raise SandboxError(f"sandbox=on, but {why}")
    log.warning(
        "jobs run WITHOUT a sandbox: %s. A job can then read this user's computenet "
        "credentials, the agent's state and every tenant's files in the data root; "
        "install bubblewrap, or pass --option sandbox=off to say so on purpose",
        why,
    )
    return None


def _unusable(box: Sandbox) -> str | None:
    """Why bwrap cannot run jobs here, tried once as a job would run; None when it can."""
    if not box.bwrap:
        return "bwrap (Debian's bubblewrap) is not installed"
    with tempfile.TemporaryDirectory(prefix="cnet-sandbox-") as workdir:
        try:
            r = subprocess.run(
                box.wrap(["true"], Path(workdir)),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bwrap did not run: {e}"
    if r.returncode != 0:
        words = r.stderr.strip().splitlines()
        return f"bwrap cannot make namespaces here ({words[-1] if words else r.returncode})"
    return None


def missing(argv: list[str], workdir: Path, env: dict[str, str]) -> OSError | None:
    """The error ``exec`` would give for ``argv[0]``, looked for as the job would: in the
    sandbox, a command that is not there would be bwrap's failure, not the job's."""
    name = argv[0]
    if "/" in name:
        path = workdir / name
        if not path.exists():
            return FileNotFoundError(name)
        if path.is_dir() or not os.access(path, os.X_OK):
            return PermissionError(name)
        return None
    if shutil.which(name, path=env.get("PATH", os.defpath)) is None:
        return FileNotFoundError(name)
    return None
