"""A real single-node Slurm cluster to benchmark and test computenet against.

Everything a cluster needs (munge key and socket, slurm.conf, state, spool, logs, job
completion records) lives in one work directory, so several clusters can run side by side and
nothing touches /etc, /run or the system munge. Install the binaries with ``install_slurm.sh``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "JobRecord",
    "SlurmCluster",
    "SlurmError",
    "available",
    "latency_probe",
    "run_trivial_jobs",
]

_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "sinfo")
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_SUN_PATH_MAX = 107
_STEPD_SOCKET_SUFFIX = len("_9999999.4294967291")
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_")
_PR_SET_PDEATHSIG = 1

_LOG_START = re.compile(
    r"^\[(?P<ts>[0-9T:.\-]+)\] .*?(?:sched: Allocate|Started) JobId=(?P<id>\d+)\b"
)
_LOG_END = re.compile(r"^\[(?P<ts>[0-9T:.\-]+)\] .*?_job_complete: JobId=(?P<id>\d+) done")
_JOBCOMP_FIELD = re.compile(r"(?:^|\s)(JobId|JobState|SubmitTime|StartTime|EndTime)=(\S*)")

_live: weakref.WeakSet[SlurmCluster] = weakref.WeakSet()


class SlurmError(RuntimeError):
    """Raised with the daemons' log tails attached, because a bare exit code never explains a
    failed start."""


@dataclass(frozen=True)
class JobRecord:
    """One finished job as Slurm's job completion log saw it (whole seconds, local clock)."""

    job_id: int
    state: str
    submit: float | None
    start: float | None
    end: float | None


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def available() -> str | None:
    """Say why Slurm cannot run here, so a test can skip loudly instead of failing obscurely.

    Returns None when the binaries are present and runnable by this user.
    """
    if not sys.platform.startswith("linux"):
        return "slurm peer needs Linux"
    if os.geteuid() != 0:
        return "slurm peer runs slurmd/slurmctld as root (SlurmUser=root); run the tests as root"
    missing = [name for name in (*_DAEMONS, *_CLIENTS) if _find_binary(name) is None]
    if missing:
        return (
            f"slurm binaries not found: {', '.join(missing)} "
            "(install them with bench/peers/install_slurm.sh)"
        )
    for name in ("slurmctld", "slurmd", "munged"):
        binary = _find_binary(name)
        assert binary is not None
        try:
            probe = subprocess.run(
                [binary, "-V"], capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{name} is not runnable: {exc}"
        if probe.returncode != 0:
            return f"{name} -V failed: {(probe.stderr or probe.stdout).strip()}"
    return None


def _mem_total_mb() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def _free_ports(count: int) -> list[int]:
    """Hold all sockets open until every port is chosen so the kernel cannot hand one out twice."""
    holders: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            holders.append(sock)
        return [sock.getsockname()[1] for sock in holders]
    finally:
        for sock in holders:
            sock.close()


def _resolves_to_loopback(host: str) -> bool:
    """Slurm's NoInAddrAny binds to whatever the hostname resolves to, not to NodeAddr, so it only
    keeps the daemons on loopback when the hostname itself maps there; elsewhere it would move
    them off 127.0.0.1 and break every connection."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(str(info[4][0]).startswith("127.") for info in infos)


def _client_env(base: Mapping[str, str]) -> dict[str, str]:
    """Drop inherited SLURM_*/SBATCH_* input variables: inside another Slurm job they would
    silently redirect or reshape our submissions."""
    return {k: v for k, v in base.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}


def _set_pdeathsig() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _parse_local(stamp: str, fmt: str) -> float | None:
    try:
        return datetime.strptime(stamp, fmt).timestamp()
    except ValueError:
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _proc_table() -> dict[int, int]:
    """pid -> ppid for every visible process; the comm field may hold spaces and parentheses."""
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1:
            table[int(entry)] = int(fields[1])
    return table


def _descendants(roots: Iterable[int], table: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, ()))
    return seen


def _pid_touches(pid: int, prefixes: tuple[str, ...]) -> bool:
    """slurmstepd leaves slurmd's session and scrubs its environment for the process title, but
    it keeps slurmd's cwd and log file, which are inside our work directory."""
    base = f"/proc/{pid}"
    targets: list[str] = []
    with contextlib.suppress(OSError):
        targets.append(os.readlink(f"{base}/cwd"))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{base}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"{base}/fd/{fd}"))
    return any(t == p or t.startswith(p + os.sep) for t in targets for p in prefixes)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _await_orphan_zombies(timeout: float) -> None:
    """Finished slurmstepds are reparented to init, which may reap lazily (about a second in
    Firecracker sandboxes); waiting keeps a ps check right after stop() clean. Never kills."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = False
        for pid, ppid in _proc_table().items():
            if ppid == 1 and _comm(pid) in ("slurmstepd", "slurm_script") and _is_zombie(pid):
                pending = True
                break
        if not pending:
            return
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class _JobCompReader:
    """Reads jobcomp/filetxt incrementally: accounting_storage/none leaves sacct with nothing to
    query, and this file is written by slurmctld the moment each job completes."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.records: dict[int, JobRecord] = {}

    def poll(self) -> dict[int, JobRecord]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return self.records
        end = chunk.rfind(b"\n")
        if end < 0:
            return self.records
        self.offset += end + 1
        for line in chunk[: end + 1].decode(errors="replace").splitlines():
            fields = dict(_JOBCOMP_FIELD.findall(line))
            if "JobId" not in fields:
                continue
            fmt = "%Y-%m-%dT%H:%M:%S"
            record = JobRecord(
                job_id=int(fields["JobId"]),
                state=fields.get("JobState", ""),
                submit=_parse_local(fields.get("SubmitTime", ""), fmt),
                start=_parse_local(fields.get("StartTime", ""), fmt),
                end=_parse_local(fields.get("EndTime", ""), fmt),
            )
            self.records[record.job_id] = record
        return self.records


class SlurmCluster:
    """A throwaway single-node Slurm (munge + slurmctld + slurmd) in its own temp dir."""

    def __init__(
        self, workdir: Path | None = None, cpus: int | None = None, tuned: bool = True
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="computenet-slurm-")) if workdir is None else Path(workdir)
        ).resolve()
        self.cpus = cpus if cpus is not None else (os.cpu_count() or 1)
        self.tuned = tuned
        self.nodename = socket.gethostname().split(".")[0]
        self.partition = "debug"
        self.ctld_port = 0
        self.slurmd_port = 0
        self._short_dir: Path | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()

    @property
    def conf_path(self) -> Path:
        return self.workdir / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    @property
    def jobcomp_path(self) -> Path:
        return self.workdir / "jobcomp.txt"

    @property
    def ctld_log_path(self) -> Path:
        return self.log_dir / "slurmctld.log"

    @property
    def jobs_dir(self) -> Path:
        """sbatch runs here so default slurm-%j.out files stay inside the work directory."""
        return self.workdir / "jobs"

    @property
    def munge_dir(self) -> Path:
        return self.workdir / "munge"

    @property
    def _runtime_dir(self) -> Path:
        return self._short_dir if self._short_dir is not None else self.workdir

    @property
    def munge_socket(self) -> Path:
        if self._short_dir is not None:
            return self._short_dir / "munge.socket"
        return self.munge_dir / "munge.socket"

    @property
    def spool_dir(self) -> Path:
        return self._runtime_dir / "spool"

    @property
    def running(self) -> bool:
        return bool(self._procs)

    def env(self) -> dict[str, str]:
        """A complete environment for client commands, so callers can pass it straight to
        subprocess without leaking a caller's own SLURM_* settings into the benchmark."""
        env = _client_env(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    def start(self, timeout: float = 60) -> None:
        """Bring the whole stack up and block until the node is idle, because a job submitted to
        a node still registering sits pending and pollutes latency numbers."""
        with self._lock:
            if self._procs:
                return
            deadline = time.monotonic() + timeout
            try:
                reason = available()
                if reason is not None:
                    raise SlurmError(reason)
                self._prepare_dirs()
                self._start_munged(deadline)
                for attempt in range(3):
                    self.ctld_port, self.slurmd_port = _free_ports(2)
                    self._write_conf()
                    self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf_path)])
                    self._spawn(
                        "slurmd",
                        ["slurmd", "-D", "-N", self.nodename, "-f", str(self.conf_path)],
                    )
                    try:
                        self._wait_idle(deadline)
                        break
                    except SlurmError:
                        if attempt == 2 or not self._port_clash():
                            raise
                        self._stop_slurm_daemons()
            except BaseException as exc:
                report = self._log_report()
                self.stop()
                if isinstance(exc, SlurmError):
                    raise SlurmError(f"{exc}\n{report}") from None
                raise
            _live.add(self)

    def stop(self) -> None:
        """Tear everything down, including slurmstepd and job processes that slurmd deliberately
        detaches from its own session, so a crashed benchmark leaves no orphans behind."""
        with self._lock:
            self._stop_slurm_daemons()
            munged = self._procs.pop("munged", None)
            if munged is not None:
                self._terminate_group(munged, grace=5.0)
            self._procs.clear()
            _await_orphan_zombies(timeout=2.0)
            _live.discard(self)
            if self._short_dir is not None:
                shutil.rmtree(self._short_dir, ignore_errors=True)
                self._short_dir = None
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def sbatch(self, *args: str) -> int:
        """Submit through the real client so measurements include what a user would pay."""
        proc = subprocess.run(
            [_find_binary("sbatch") or "sbatch", "--parsable", *args],
            env=self.env(),
            cwd=self.jobs_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise SlurmError(
                f"sbatch {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return int(proc.stdout.strip().split(";")[0])

    def wait_jobs(
        self, job_ids: Iterable[int], timeout: float, reader: _JobCompReader | None = None
    ) -> dict[int, JobRecord]:
        """Completion is observed through the jobcomp file rather than squeue, since polling the
        controller would compete with the very scheduler being measured."""
        pending = set(job_ids)
        reader = reader or _JobCompReader(self.jobcomp_path)
        deadline = time.monotonic() + timeout
        while True:
            records = reader.poll()
            if pending.issubset(records):
                return {job_id: records[job_id] for job_id in pending}
            if time.monotonic() > deadline:
                missing = sorted(pending - set(records))
                raise SlurmError(
                    f"{len(missing)} job(s) not finished after {timeout:.0f}s: {missing[:10]}"
                    f"\n{self._log_report()}"
                )
            self._check_alive()
            time.sleep(0.01)

    def log_times(self, offset: int = 0) -> tuple[dict[int, float], dict[int, float]]:
        """Start and end times with millisecond resolution from slurmctld's own log, because the
        job completion records only carry whole seconds."""
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        fmt = "%Y-%m-%dT%H:%M:%S.%f"
        try:
            with open(self.ctld_log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except FileNotFoundError:
            return starts, ends
        for line in text.splitlines():
            match = _LOG_START.match(line)
            if match is not None:
                stamp = _parse_local(match["ts"], fmt)
                if stamp is not None:
                    starts.setdefault(int(match["id"]), stamp)
                continue
            match = _LOG_END.match(line)
            if match is not None:
                stamp = _parse_local(match["ts"], fmt)
                if stamp is not None:
                    ends[int(match["id"])] = stamp
        return starts, ends

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._procs else "stopped"
        port = self.ctld_port
        return f"SlurmCluster({str(self.workdir)!r}, cpus={self.cpus}, {state}, port={port})"

    def _prepare_dirs(self) -> None:
        """Wipe leftovers so job ids, state and jobcomp lines from an earlier run in the same
        directory cannot be mistaken for this run's."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("munge", "state", "spool", "log", "jobs"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        for name in ("jobcomp.txt", "slurm.conf"):
            (self.workdir / name).unlink(missing_ok=True)
        socket_len = len(str(self.munge_dir / "munge.socket"))
        stepd_len = len(str(self.workdir / "spool")) + 1 + len(self.nodename) + _STEPD_SOCKET_SUFFIX
        if max(socket_len, stepd_len) > _SUN_PATH_MAX and self._short_dir is None:
            self._short_dir = Path(tempfile.mkdtemp(prefix="cnslurm-", dir="/tmp"))
        self.munge_dir.mkdir()
        os.chmod(self.munge_dir, 0o755)
        for path in (self.workdir / "state", self.spool_dir, self.log_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)

    def _daemon_env(self) -> dict[str, str]:
        env = _client_env(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        path = env.get("PATH", "/usr/bin:/bin")
        missing = [d for d in _SBIN_DIRS if d not in path.split(":")]
        env["PATH"] = ":".join([path, *missing])
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        binary = _find_binary(argv[0])
        if binary is None:
            raise SlurmError(f"{argv[0]} not found")
        preexec = _set_pdeathsig if threading.current_thread() is threading.main_thread() else None
        with open(self.log_dir / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(
                [binary, *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._daemon_env(),
                start_new_session=True,
                preexec_fn=preexec,
            )

    def _start_munged(self, deadline: float) -> None:
        """A private munged with its own key: the system one may be absent, stopped, or keyed
        differently, and sharing it would couple unrelated clusters."""
        key = self.munge_dir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(128))
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
        )
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.munge_socket))
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise SlurmError("munged did not open its socket in time")

    def _write_conf(self) -> None:
        mem = max(256, int(_mem_total_mb() * 0.9))
        ws = self.workdir
        lines = [
            "ClusterName=computenet",
            f"SlurmctldHost={self.nodename}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={ws / 'state'}",
            f"SlurmdSpoolDir={self.spool_dir}",
            f"SlurmctldPidFile={ws / 'log' / 'slurmctld.pid'}",
            f"SlurmdPidFile={ws / 'log' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.ctld_log_path}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "LogTimeFormat=iso8601_ms",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_path}",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "KillWait=5",
        ]
        if _resolves_to_loopback(self.nodename):
            lines.append("CommunicationParameters=NoInAddrAny,NoCtldInAddrAny")
        if self.tuned:
            lines += [
                "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
                "MessageTimeout=5",
                "MaxJobCount=100000",
            ]
        lines += [
            f"NodeName={self.nodename} NodeAddr=127.0.0.1 NodeHostname={self.nodename} "
            f"CPUs={self.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus} "
            f"ThreadsPerCore=1 RealMemory={mem} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.nodename} Default=YES "
            "MaxTime=INFINITE State=UP OverSubscribe=NO",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _wait_idle(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                probe = subprocess.run(
                    [_find_binary("sinfo") or "sinfo", "-h", "-N", "-n", self.nodename, "-o", "%T"],
                    env=self.env(),
                    capture_output=True,
                    text=True,
                    timeout=max(1.0, min(10.0, deadline - time.monotonic())),
                    check=False,
                )
                state = probe.stdout.strip() or probe.stderr.strip()
                if probe.returncode == 0 and state == "idle":
                    return
            except subprocess.TimeoutExpired:
                state = "sinfo timed out"
            time.sleep(0.1)
        raise SlurmError(f"node {self.nodename} not idle in time (last state: {state!r})")

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            code = proc.poll()
            if code is not None:
                raise SlurmError(f"{name} exited with code {code}")

    def _port_clash(self) -> bool:
        text = "".join(_tail(self.log_dir / f"{n}.out", 50) for n in ("slurmctld", "slurmd"))
        return "Address already in use" in text

    def _log_report(self) -> str:
        parts = []
        for path in (
            self.munge_dir / "munged.log",
            self.log_dir / "munged.out",
            self.log_dir / "slurmctld.out",
            self.log_dir / "slurmd.out",
        ):
            tail = _tail(path)
            if tail:
                parts.append(f"--- {path} ---\n{tail}")
        return "\n".join(parts)

    def _stray_stepds(self) -> set[int]:
        prefixes = tuple(str(p) for p in (self.workdir, self._short_dir) if p is not None)
        me = os.getpid()
        return {
            pid
            for pid in _proc_table()
            if pid != me and _comm(pid) == "slurmstepd" and _pid_touches(pid, prefixes)
        }

    def _kill_stepds(self, reap_wait: float = 5.0) -> None:
        """SIGKILL, because slurmstepd ignores SIGTERM; then wait until init has reaped them, so
        whoever checks ps right after stop() does not find defunct slurmstepd entries."""
        killed: set[int] = set()
        for _ in range(3):
            victims = _descendants(self._stray_stepds(), _proc_table())
            if not victims:
                break
            for pid in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= victims
            time.sleep(0.05)
        deadline = time.monotonic() + reap_wait
        while killed and time.monotonic() < deadline:
            killed = {pid for pid in killed if os.path.exists(f"/proc/{pid}")}
            if killed:
                time.sleep(0.05)

    def _stop_slurm_daemons(self) -> None:
        self._kill_stepds()
        for name in ("slurmd", "slurmctld"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                self._terminate_group(proc, grace=10.0)
        self._kill_stepds()

    @staticmethod
    def _terminate_group(proc: subprocess.Popen[bytes], grace: float) -> None:
        """Signal the whole process group: slurmctld forks slurmscriptd, which would outlive a
        signal sent only to the leader."""
        pgid = proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


@atexit.register
def _stop_all() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.stop()


def _submit_to_start(
    submits: dict[int, float],
    records: dict[int, JobRecord],
    log_starts: dict[int, float],
) -> dict[str, Any]:
    """Prefer slurmctld's millisecond log stamps against our own submit clock; without them fall
    back to jobcomp's whole-second submit and start times, and say which one was used since they
    can differ by up to a second per job."""
    whole = [
        (r.start - r.submit) * 1000.0
        for r in records.values()
        if r.start is not None and r.submit is not None
    ]
    if all(job_id in log_starts for job_id in submits):
        delays = [(log_starts[j] - submits[j]) * 1000.0 for j in submits]
        source, resolution = "slurmctld_log", 0.001
    else:
        delays = whole
        source, resolution = "jobcomp", 1.0
    return {
        "submit_to_start_p50_ms": round(_percentile(delays, 50), 1),
        "submit_to_start_p99_ms": round(_percentile(delays, 99), 1),
        "submit_to_start_max_ms": round(max(delays), 1) if delays else math.nan,
        "resolution_s": resolution,
        "start_time_source": source,
        "jobcomp_submit_to_start_p50_ms": round(_percentile(whole, 50), 1),
        "jobcomp_submit_to_start_p99_ms": round(_percentile(whole, 99), 1),
        "jobcomp_resolution_s": 1,
    }


def _states(records: dict[int, JobRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records.values():
        counts[record.state] = counts.get(record.state, 0) + 1
    return counts


def run_trivial_jobs(cluster: SlurmCluster, n: int, timeout: float | None = None) -> dict[str, Any]:
    """Submit n no-op jobs back to back and wait for all of them.

    Submit timestamps are taken on this side just before each sbatch call, so the latency
    includes the client cost a real user pays. Output goes to /dev/null so the benchmark does not
    turn into a file-creation test.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    reader = _JobCompReader(cluster.jobcomp_path, _size(cluster.jobcomp_path))
    log_offset = _size(cluster.ctld_log_path)
    submits: dict[int, float] = {}
    t0 = time.time()
    for _ in range(n):
        stamp = time.time()
        job_id = cluster.sbatch("--wrap=true", "--output=/dev/null", "--job-name=cn-trivial")
        submits[job_id] = stamp
    t_submitted = time.time()
    wait = timeout if timeout is not None else 60.0 + 5.0 * n / max(1, cluster.cpus)
    records = cluster.wait_jobs(submits, wait, reader)
    t_done = time.time()
    log_starts, _ = cluster.log_times(log_offset)
    wall = t_done - t0
    result: dict[str, Any] = {
        "submitted": n,
        "submit_rate_per_s": round(n / max(t_submitted - t0, 1e-9), 2),
        "throughput_per_s": round(n / max(wall, 1e-9), 2),
        "wall_s": round(wall, 3),
        "states": _states(records),
        "cpus": cluster.cpus,
        "tuned": cluster.tuned,
    }
    result.update(_submit_to_start(submits, records, log_starts))
    return result


def latency_probe(
    cluster: SlurmCluster, n: int, timeout: float = 60.0, jitter_s: float = 1.0
) -> dict[str, Any]:
    """Submit one job at a time on an otherwise idle cluster, so the numbers show the scheduler's
    reaction time rather than queueing behind other jobs.

    slurmctld only looks at new batch jobs on a once-a-second tick. Submitting right after the
    previous job finished would lock every probe to just after a tick and always measure the
    worst case (~1 s); a random pause of up to ``jitter_s`` gives arrivals a random phase, as
    independent users would. Pass ``jitter_s=0`` for the back-to-back worst case.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    rng = random.Random()
    reader = _JobCompReader(cluster.jobcomp_path, _size(cluster.jobcomp_path))
    log_offset = _size(cluster.ctld_log_path)
    submits: dict[int, float] = {}
    observed_done: list[float] = []
    for _ in range(n):
        if jitter_s > 0:
            time.sleep(rng.uniform(0.0, jitter_s))
        stamp = time.time()
        job_id = cluster.sbatch("--wrap=true", "--output=/dev/null", "--job-name=cn-probe")
        submits[job_id] = stamp
        cluster.wait_jobs([job_id], timeout, reader)
        observed_done.append((time.time() - stamp) * 1000.0)
    records = {job_id: reader.records[job_id] for job_id in submits}
    log_starts, _ = cluster.log_times(log_offset)
    result: dict[str, Any] = {
        "probes": n,
        "jitter_s": jitter_s,
        "states": _states(records),
        "submit_to_done_observed_p50_ms": round(_percentile(observed_done, 50), 1),
        "submit_to_done_observed_p99_ms": round(_percentile(observed_done, 99), 1),
    }
    result.update(_submit_to_start(submits, records, log_starts))
    return result


def main() -> int:
    """``python -m bench.peers.slurm [--cpus N]``: a cluster to try an agent against by
    hand. It prints the slurm.conf to give the agent, and stops, whole, on Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--cpus", type=int, default=None, help="the node's CPUs (default: all)")
    args = ap.parse_args()
    cluster = SlurmCluster(cpus=args.cpus)
    try:
        cluster.start()
    except SlurmError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"slurm.conf: {cluster.conf_path}  (partition {cluster.partition})", flush=True)
    print(
        f"try: cnet agent run --backend slurm --partition {cluster.partition} "
        f"-o conf={cluster.conf_path}    Ctrl-C stops the cluster",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
