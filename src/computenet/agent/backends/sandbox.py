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
# would hide them (a checkout under /tmp): the reaper, and a function job, run them.
RUNTIME = tuple(
    dict.fromkeys(
        Path(p)
        for p in (sys.prefix, sys.base_prefix, *sys.path)
        if p and os.path.isabs(p) and os.path.isdir(p)
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
        fresh: list[Path] = []  # empty file systems mounted so far
        made: set[Path] = set()

        def room(target: Path) -> None:
            """Directories on the way to ``target`` inside an empty file system, made
            traversable: bwrap makes them for root alone, and a job run as another user
            could not reach its own directory by its full path."""
            if not self.perms:
                return
            under = [m for m in fresh if target.is_relative_to(m) and target != m]
            top = max(under, key=lambda m: len(m.parts), default=None)
            if top is None:
                return
            for a in reversed(target.parents):
                if a.is_relative_to(top) and a != top and a not in made:
                    made.add(a)
                    args.extend(["--perms", "0755", "--dir", str(a)])

        def empty(path: Path, perms: str) -> None:
            room(path)
            args.extend(
                ["--perms", perms, "--tmpfs", str(path)] if self.perms else ["--tmpfs", str(path)]
            )
            fresh.append(path)

        for scratch in ("/tmp", "/dev/shm"):  # writable to every user, as on the host
            empty(Path(scratch), "1777")
        runtime = Path(f"/run/user/{os.getuid()}")
        if runtime.is_dir():
            empty(runtime, "0700")
        dirs = hidden(self.private)
        for keep in RUNTIME:  # first: a private directory inside one is hidden after it
            if not any(keep.resolve().is_relative_to(d) for d in dirs):
                room(keep)
                args += ["--ro-bind", str(keep), str(keep)]
        for d in dirs:
            empty(d, "0755")
        for f in self.secret:
            if f.is_file():
                room(f.resolve())
                args += ["--ro-bind", "/dev/null", str(f.resolve())]
        room(workdir)
        args += ["--bind", str(workdir), str(workdir)]
        for path in inputs:
            real = path.resolve()
            if real.is_relative_to(workdir) and real.exists() and not path.is_symlink():
                args += ["--ro-bind", str(real), str(real)]
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


def make(mode: str, private: Iterable[Path], user: RunAs | None = None) -> Sandbox | None:
    """The sandbox for ``mode``: ``on`` needs one, ``auto`` takes one where bwrap works
    here and says loudly where it does not, ``off`` runs jobs as they are. ``private``:
    directories to hide, and files (a key kept apart); a private directory is made where
    it is missing, so that it can always be hidden: one made later (the user's first
    ``cnet login``) would otherwise be in plain view. A ``user`` to run jobs as needs the
    sandbox, whatever the mode: it is the reaper inside that becomes the user."""
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
    why = unusable(box)
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


def unusable(box: Sandbox) -> str | None:
    """Why bwrap cannot run jobs here, tried once as a job would run; None when it can."""
    if not box.bwrap:
        return "bwrap (Debian's bubblewrap) is not installed"
    with tempfile.TemporaryDirectory(prefix="cnet-sandbox-") as workdir:
        if box.user is not None:
            runas.hand_over(Path(workdir), box.user)
        launch = box.launch(["true"], {}, Path(workdir))
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
            return f"bwrap did not run: {e}"
        finally:
            launch.abandon()
    if r.returncode != 0:
        words = r.stderr.strip().splitlines()
        return f"bwrap cannot make namespaces here ({words[-1] if words else r.returncode})"
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
        except ValueError:
            continue
    return out
