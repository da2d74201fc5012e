"""Keeping a local job out of what belongs to computenet, and off the machine's files.

A job on the local backend runs as the agent's user. Without more it could read what that
user can: the computenet credentials in the user's config (an admin token, on a machine
set up by ``cnet up``), the node's database, the agent's state (its key, other jobs'
directories and outputs) and the pool's data root, every tenant's home included; and it
could write where that user can, leaving code for the user's next login to run.

bubblewrap (``bwrap``) runs each job in namespaces of its own, in which:

- the machine's file system is read-only, except ``/dev`` and the job's own directory;
- ``/tmp``, ``/dev/shm`` and the user's runtime directory are empty and the job's own;
- computenet's directories are empty and read-only, and its key files empty;
- ``/proc`` shows the job's own processes only (with the host's, another process of the
  same user would show the whole file system under ``/proc/PID/root``);
- a root agent's job has no capabilities, so it cannot mount or unmount anything.

bwrap itself starts with an environment of its own; the job's goes to ``reaper.py``, the
first process inside, through a descriptor.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from computenet.agent.backends import runas
from computenet.agent.backends.runas import RunAs

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
REAPER = Path(__file__).with_name("reaper.py")
# The agent's Python and its import path, bound back where /tmp or a hidden directory
# would hide them (a checkout under /tmp): the reaper, and a function job, run them. Not
# one that holds what the sandbox makes its own (an agent started in ``/``).
RUNTIME = tuple(
    dict.fromkeys(
        Path(p).resolve()
        for p in (sys.prefix, sys.base_prefix, *sys.path)
        if p
        and os.path.isabs(p)
        and os.path.isdir(p)
        and not any(
            Path(own).is_relative_to(Path(p).resolve()) for own in ("/dev", "/proc", "/tmp")
        )
    )
)
DEVICES = (
    "nvidia*",
    "nvidia-caps",
    "dri",
    "kfd",
    "davinci*",
    "devmm_svm",
    "hisi_hdc",
    "accel",
    "infiniband",
    "mlu*",
    "cambricon*",
)
LEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class SandboxError(RuntimeError):
    """The sandbox was asked for and cannot be had here."""


@dataclass
class Launch:
    """What starts a job in the sandbox: bwrap's command and environment, the descriptors
    it inherits, and the one the agent reads the job's usage from once it has ended."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...]
    report: int

    def started(self) -> None:
        """The child holds its ends now; the agent's copies would keep the pipe open."""
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = ()

    def abandon(self) -> None:
        self.started()
        os.close(self.report)


@dataclass(frozen=True)
class Sandbox:
    bwrap: str
    private: tuple[Path, ...]  # directories hidden whole
    secret: tuple[Path, ...] = ()  # files hidden (found empty)
    user: RunAs | None = None  # who the job runs as; None: the agent's user
    perms: bool = True  # bwrap knows --perms (0.5 and later)

    def command(self, workdir: Path, inputs: Iterable[Path] = ()) -> list[str]:
        """bwrap's part of the command; what to hide is looked up now, so that a
        directory made since the agent started is hidden too. ``inputs``: the job's
        staged inputs, linked to the pool's copies, which it may read only."""
        workdir = workdir.resolve()
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc"]
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]
            if self.user is not None:  # the reaper's, to become the user; not the job's
                args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        args += ["--ro-bind", "/", "/", "--dev", "/dev"]
        for dev in devices():
            args += ["--dev-bind", dev, dev]
        args += ["--proc", "/proc"]
        for kernel in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"):
            args += ["--ro-bind-try", kernel, kernel]
        dirs = hidden(self.private)
        empty = [(Path("/tmp"), "1777"), (Path("/dev/shm"), "1777")]  # as on the host
        runtime = Path(f"/run/user/{os.getuid()}")
        if runtime.is_dir():
            empty.append((runtime, "0700"))
        empty += [(d, "0755") for d in dirs]
        binds = [
            (keep, keep, True)
            for keep in RUNTIME  # a private directory inside one is hidden after it
            if not any(keep.is_relative_to(d) for d in dirs)
        ]
        if self.user is not None:
            places = [workdir, *(d for _, d, _ in binds)]
            shut = closed(places, self.user, [p for p, _ in empty], [d for _, d, _ in binds])
            empty += [(p, "0755") for p in shut]
            dirs += tuple(shut)
            # One that holds a closed directory would lay it bare again over the empty one.
            binds = [b for b in binds if not any(c.is_relative_to(b[1]) for c in shut)]
        binds = _wanted(binds, [p for p, _ in empty])
        binds += [(Path("/dev/null"), f.resolve(), True) for f in self.secret if f.is_file()]
        binds.append((workdir, workdir, False))
        for path in inputs:
            real = path.resolve()
            if real.is_relative_to(workdir) and real.exists() and not path.is_symlink():
                binds.append((real, real, True))
        args += _mounts(empty, binds, self.perms)
        for d in dirs:
            args += ["--remount-ro", str(d)]
        return [*args, "--chdir", str(workdir)]

    def launch(
        self,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        inputs: Iterable[Path] = (),
        data_limit: int = 0,
    ) -> Launch:
        """``data_limit``: the job's ``RLIMIT_DATA`` in bytes, 0 for none."""
        cmd = self.command(workdir, inputs)
        spec = os.memfd_create("cnet-job", 0)  # inheritable: bwrap passes it on
        try:
            ids = None if self.user is None else self.user.ids()
            os.write(spec, marshal.dumps((list(argv), dict(env), ids, int(data_limit))))
            os.lseek(spec, 0, os.SEEK_SET)
            report, theirs = os.pipe()
        except BaseException:
            os.close(spec)
            raise
        os.set_inheritable(theirs, True)
        reaper = [sys.executable, "-I", "-S", str(REAPER), str(spec), str(theirs)]
        return Launch([*cmd, "--", *reaper], dict(LEAN_ENV), (spec, theirs), report)


def _mounts(
    empty: list[tuple[Path, str]], binds: list[tuple[Path, Path, bool]], perms: bool
) -> list[str]:
    """bwrap's mounts, outer before inner (a mount over a parent would hide one made
    inside it before). Directories bwrap must make on the way to a mount inside an
    empty file system are made here first, traversable: bwrap makes them for root
    alone, and a job run as another user could not reach its own directory by its
    full path."""
    plan: list[tuple[Path, list[str], bool]] = []
    for path, mode in empty:
        flags = ["--perms", mode] if perms else []
        plan.append((path, [*flags, "--tmpfs", str(path)], True))
    for src, dest, ro in binds:
        plan.append((dest, ["--ro-bind" if ro else "--bind", str(src), str(dest)], False))
    plan.sort(key=lambda m: len(m[0].parts))  # stable: a tmpfs before a bind at its place
    out: list[str] = []
    done: list[tuple[Path, bool]] = []
    made: set[Path] = set()
    for target, op, fresh in plan:
        top, inside_fresh = _deepest(target, [m for m in done if m[0] != target])
        if inside_fresh and perms:
            for a in reversed(target.parents):
                if a.is_relative_to(top) and a != top and a not in made:
                    made.add(a)
                    out += ["--perms", "0755", "--dir", str(a)]
        out += op
        done.append((target, fresh))
    return out


def _wanted(
    binds: list[tuple[Path, Path, bool]], empty: list[Path]
) -> list[tuple[Path, Path, bool]]:
    """The binds back that something would hide otherwise: those inside an empty file
    system of the sandbox, and not inside another bound back (each costs bwrap a mount,
    and every job pays for it)."""
    kept: list[tuple[Path, Path, bool]] = []
    for b in sorted(binds, key=lambda b: len(b[1].parts)):
        if _deepest(b[1], [(m, True) for m in empty] + [(k[1], False) for k in kept])[1]:
            kept.append(b)
    return kept


def closed(
    targets: Iterable[Path], user: RunAs, empty: Iterable[Path], bound: Iterable[Path]
) -> list[Path]:
    """The outermost directories on the way to ``targets`` (the job's directory, the
    agent's Python) that ``user`` may not pass through on the machine (``/root``, 0700,
    above a root agent's state): an empty one is mounted over each, so that the job
    reaches its own directory by its full path (``HOME``, ``TMPDIR``) and the Python a
    function job runs. What it hides was out of the user's reach anyway. Directories in
    the sandbox's ``empty`` file systems are its own; those ``bound`` from the machine
    are as they are there."""
    mounts = [(m, True) for m in empty] + [(m, False) for m in bound]
    out: list[Path] = []
    for target in targets:
        for a in reversed(target.parents):
            if any(a.is_relative_to(c) for c in out):
                break
            if _deepest(a, mounts)[1]:
                continue
            if a != Path("/") and not passable(a, user):
                out.append(a)
                break
    return out


def _deepest(path: Path, mounts: list[tuple[Path, bool]]) -> tuple[Path, bool]:
    """The innermost of ``mounts`` (each a place and whether it is an empty file system)
    that holds ``path``; ``/`` as the machine's own where none does."""
    holders = [m for m in mounts if path.is_relative_to(m[0])]
    return max(holders, key=lambda m: len(m[0].parts), default=(Path("/"), False))


def passable(path: Path, user: RunAs) -> bool:
    try:
        st = path.stat()
    except OSError:
        return True
    if st.st_uid == user.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in user.groups:  # the primary group among them
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def devices() -> list[str]:
    """Accelerators' device files (and what their runtimes open beside them): the rest of
    the machine's ``/dev``, its disks among them, stays out of a job's reach."""
    return sorted({str(p) for pattern in DEVICES for p in Path("/dev").glob(pattern)})


def hidden(paths: Iterable[Path]) -> tuple[Path, ...]:
    """The directories to hide: those that exist, outermost only (an inner one is hidden
    with its parent)."""
    real = sorted({p.resolve() for p in paths if p.is_dir()}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in real:
        if p != Path("/") and not any(p.is_relative_to(q) for q in out):
            out.append(p)
    return tuple(out)


def make(
    mode: str, private: Iterable[Path], user: RunAs | None = None, jobs: Path | None = None
) -> Sandbox | None:
    """The sandbox for ``mode``: ``on`` needs one, ``auto`` takes one where bwrap works
    here and says loudly where it does not, ``off`` runs jobs as they are. ``private``:
    directories to hide, and files (a key kept apart); a private directory is made where
    it is missing, so that it can always be hidden: one made later (the user's first
    ``cnet login``) would otherwise be in plain view. A ``user`` to run jobs as needs the
    sandbox, whatever the mode: it is the reaper inside that becomes the user. ``jobs``:
    where jobs' directories are made, and the sandbox is tried."""
    if mode not in MODES:
        raise SandboxError(f"sandbox={mode!r}: expected one of {', '.join(MODES)}")
    if user is not None and mode == "off":
        raise SandboxError(f"user={user.name} needs the sandbox: sandbox=off cannot have it")
    if mode == "off":
        return None
    secret = tuple(p for p in private if p.is_file())
    dirs = tuple(p for p in private if not p.is_file())
    for d in dirs:
        # One this user cannot make (a system user's missing home) holds nothing of it.
        with contextlib.suppress(PermissionError, FileExistsError, OSError):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
    bwrap = shutil.which("bwrap") or ""
    box = Sandbox(bwrap, dirs, secret, user, _knows_perms(bwrap))
    if user is not None and bwrap and not box.perms:
        raise SandboxError(f"user={user.name} needs bubblewrap 0.5 or later (--perms)")
    why = unusable(box, jobs)
    if why is None:
        return box
    if mode == "on":
        raise SandboxError(f"sandbox=on, but {why}")
    if user is not None:
        raise SandboxError(f"user={user.name} needs the sandbox, but {why}")
    log.warning(
        "jobs run WITHOUT a sandbox: %s. A job can then read this user's computenet "
        "credentials, the agent's state and every tenant's files in the data root; "
        "install bubblewrap, or pass --option sandbox=off to say so on purpose",
        why,
    )
    return None


def _knows_perms(bwrap: str) -> bool:
    if not bwrap:
        return False
    try:
        r = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--perms" in r.stdout + r.stderr


def unusable(box: Sandbox, where: Path | None = None) -> str | None:
    """Why bwrap cannot run jobs here, tried once as a job would run (in a directory
    under ``where``, as the job's user, reaching it by its full path); None when it
    can."""
    if not box.bwrap:
        return "bwrap (Debian's bubblewrap) is not installed"
    with tempfile.TemporaryDirectory(prefix=".cnet-sandbox-", dir=where) as tmp:
        workdir = Path(tmp).resolve()
        if box.user is not None:
            runas.hand_over(workdir, box.user)
        argv = ["sh", "-c", 'cd "$1" && : > "$1/probe"', "sh", str(workdir)]
        launch = box.launch(argv, dict(LEAN_ENV), workdir)
        try:
            r = subprocess.run(
                launch.argv,
                env=launch.env,
                pass_fds=launch.pass_fds,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            launch.abandon()
            return f"bwrap did not run: {e}"
        launch.started()
        seen = reaped(launch.report)
    words = r.stderr.strip().splitlines()
    last = words[-1] if words else f"exit {r.returncode}"
    if seen.status is None:
        return f"bwrap cannot make namespaces here ({last})"
    if seen.status != 0:
        who = f"user {box.user.name}" if box.user else "the agent's user"
        return f"a job run as {who} cannot write its own directory under {where} ({last})"
    return None


def missing(argv: list[str], workdir: Path, env: dict[str, str]) -> OSError | None:
    """The error ``exec`` would give for ``argv[0]``, looked for as the job would, so that
    a command that is not there fails before the job starts, as outside the sandbox."""
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


@dataclass
class Reaped:
    """What the reaper said once the job ended; ``status`` None where it said nothing (it
    was killed, or the sandbox failed before it ran)."""

    status: int | None = None  # the job's exit code; -N: killed by signal N
    cpu: float = 0.0
    max_rss: int = 0
    base_rss: int = 0  # the reaper's own, which ``max_rss`` cannot be below
    error: str = ""  # why the command could not be run


def reaped(report: int) -> Reaped:
    """Reads the reaper's lines, at most a few KiB, each checked: a job cannot reach the
    pipe (the reaper is not dumpable), yet nothing it says is taken on trust."""
    data = b""
    try:
        while len(data) < 1 << 14 and (chunk := os.read(report, 1 << 12)):
            data += chunk
    except OSError:
        pass
    finally:
        os.close(report)
    out = Reaped()
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        try:
            if key == "error":
                out.error = value[:500]
            elif key == "status" and -64 <= (status := int(value)) <= 255:
                out.status = status
            elif key == "cpu" and 0 <= (cpu := float(value)) < 1e12:
                out.cpu = cpu
            elif key == "max_rss" and 0 <= (rss := int(value)) < 1 << 50:
                out.max_rss = rss
            elif key == "base_rss" and 0 <= (rss := int(value)) < 1 << 50:
                out.base_rss = rss
        except ValueError:
            continue
    return out
