"""Running a root agent's jobs as another user.

In the sandbox a root agent's job has no capabilities, yet it is still uid 0 to the file
system: it reads every file root owns (``/etc/shadow``, other users' homes) and could
write any root-owned file the sandbox left writable. With ``user=NAME`` the reaper,
still root inside the sandbox, drops to that user, its groups and no capabilities just
before it starts the job; the job's directory is handed to the user and its staged
inputs made readable, so the job works as it would as root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("computenet.agent")


class RunAsError(ValueError):
    """The user asked for cannot run jobs here."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def ids(self) -> tuple[int, int, list[int]]:
        """What the reaper needs, in types ``marshal`` carries."""
        return self.uid, self.gid, list(self.groups)

    def env(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name}


def lookup(name: str) -> RunAs | None:
    """The user ``name`` (a name or a number); None for the agent's own user (``root``
    for a root agent: asked for on purpose)."""
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise RunAsError(f"user={name!r}: no such user on this machine") from None
    if pw.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise RunAsError(
            f"user={name!r}: only an agent running as root can run jobs as another user "
            f"(this one runs as uid {os.geteuid()})"
        )
    groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, groups)


def hand_over(workdir: Path, user: RunAs, inputs: Iterable[Path] = ()) -> None:
    """The job's directory, and each directory in it, become the user's (the agent's
    files in it stay the agent's; the user may remove them, as the job could before).
    Staged inputs are read-only mounts in the sandbox; they become readable to all, a
    dataset's pool copy with them (hard links), which is hidden from jobs."""
    real = workdir.resolve()  # no link on the way: a chmod must not land elsewhere
    inputs = [p for p in inputs if p.exists() and p.resolve() == real / p.relative_to(workdir)]
    for p in inputs:
        _readable(p)
    skip = {os.path.abspath(p) for p in inputs}
    os.chown(workdir, user.uid, user.gid, follow_symlinks=False)
    os.chmod(workdir, 0o711)  # bwrap enters it as root without capabilities: as "other"
    for here, dirs, _files in os.walk(workdir):  # links to directories are not followed
        dirs[:] = [d for d in dirs if os.path.join(here, d) not in skip]
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(here, d), user.uid, user.gid, follow_symlinks=False)


def close_up(dirs: Iterable[Path]) -> None:
    """The agent's own directories (its state, the data root) to the agent's user
    alone, where that user owns them: they hold jobs' environments, outputs and logs
    and every tenant's data, and the pool's files in them are made readable to all when
    linked into a job run as another user."""
    for d in dirs:
        with contextlib.suppress(OSError):
            st = os.stat(d)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(d, stat.S_IMODE(st.st_mode) & ~0o077)
                log.info("%s is the agent's alone now (mode go-rwx)", d)


def _readable(path: Path) -> None:
    def one(p: Path) -> None:
        st = os.lstat(p)
        want = 0o555 if stat.S_ISDIR(st.st_mode) else 0o444
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & want != want:
            with contextlib.suppress(OSError):  # read-only storage: left as it is
                os.chmod(p, stat.S_IMODE(st.st_mode) | want)

    one(path)
    if path.is_dir():
        for here, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                one(Path(here) / name)
