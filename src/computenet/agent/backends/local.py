"""Runs tasks as processes on the agent's own machine.

Each task is a process group and session of its own, so a time limit or a cancel reaches
every process it started, and runs in a sandbox (``sandbox.py``) that hides computenet's
own files from it. The agent learns of an exit through a pidfd (no thread per task)
and reaps the child with ``wait4`` to get its exit status and resource usage together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from computenet.agent import workdir as job_files
from computenet.agent.backends import runas
from computenet.agent.backends import sandbox as sandbox_
from computenet.agent.backends.base import Backend, LaunchError, Outcome, Task, format_seconds
from computenet.agent.backends.confine import Confinement, Cores, job_cgroups, make_cgroup
from computenet.model import JobState, Usage

log = logging.getLogger("computenet.agent")
KILL_GRACE = 5.0


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    started_at: float
    exited: asyncio.Future[tuple[int, Any]]
    stop_state: JobState | None = None
    stop_reason: str = ""
    descendants: list[psutil.Process] = field(default_factory=list)
    confined: Confinement | None = None
    report: int | None = None  # in the sandbox: where the job's usage comes from

    @property
    def boxed(self) -> bool:
        return self.report is not None


class LocalBackend(Backend):
    """Options: ``kill_grace`` (seconds from SIGTERM to SIGKILL); ``pin`` (``false`` to
    leave jobs unpinned to cores); ``sandbox`` (``auto``: where bubblewrap works, ``on``:
    refuse to start without it, ``off``); ``user`` (a root agent's jobs run as this user,
    in the sandbox)."""

    name = "local"

    def __init__(
        self,
        kill_grace: float | str = KILL_GRACE,
        pin: bool | str = True,
        sandbox: str = "auto",
        user: str | None = None,
    ) -> None:
        self.kill_grace = float(kill_grace)
        self.pin = str(pin).lower() not in ("false", "0", "no")
        self.sandbox_mode = str(sandbox).lower()
        if self.sandbox_mode not in sandbox_.MODES:
            raise ValueError(f"sandbox={sandbox!r}: expected one of {', '.join(sandbox_.MODES)}")
        if user is not None and not user.strip():
            raise ValueError("user=: expected a user's name or uid")
        self.user = runas.lookup(user) if user else None
        self.user_asked = user is not None
        self.sandbox: sandbox_.Sandbox | None = None
        self._procs: dict[str, _Proc] = {}
        self._pids = Path()  # where each running job's process is noted, out of its reach
        self._cores = Cores()
        self._cgroups = job_cgroups()

    async def open(self, state_dir: Path, private: tuple[Path, ...] = ()) -> None:
        self._pids = state_dir / "running"
        self._pids.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sandbox = await asyncio.to_thread(
            sandbox_.make, self.sandbox_mode, private, self.user, state_dir
        )
        if self.user is not None:
            log.info("jobs run as %s (uid %d)", self.user.name, self.user.uid)
        elif os.geteuid() == 0 and not self.user_asked:
            log.warning(
                "jobs run as root%s: they can read every file root can; pass --option "
                "user=NAME to run them as that user (user=root to say so on purpose)",
                " (without capabilities, in the sandbox)" if self.sandbox else "",
            )

    def _confine(self, task: Task) -> Confinement:
        req = task.spec.resources
        cores = self._cores.take(req.cpus) if self.pin else ()
        cgroup = None
        if req.memory and self._cgroups is not None:
            cgroup = make_cgroup(self._cgroups, f"cnet-{task.job_id}-{task.attempt}", req.memory)
        return Confinement(cores, req.memory, cgroup)

    def _free(self, c: Confinement) -> None:
        self._cores.give(c.cores)
        c.release()

    async def start(self, task: Task) -> float:
        task.workdir.mkdir(parents=True, exist_ok=True)
        confined = self._confine(task)
        env = dict(task.env)
        if confined.cores:
            env["CNET_CORES"] = ",".join(map(str, confined.cores))
        argv, launch = task.spec.command, None
        try:
            if self.sandbox is not None:
                missing = sandbox_.missing(argv, task.workdir, env)
                if missing is not None:
                    raise missing
                inputs = [task.workdir / item.path for item in task.spec.inputs]
                if self.user is not None:
                    env.update(self.user.env())
                    await asyncio.to_thread(runas.hand_over, task.workdir, self.user, inputs)
                limit = confined.memory if confined.cgroup is None else 0
                launch = self.sandbox.launch(argv, env, task.workdir, inputs, limit)
            preexec = confined.preexec(rlimit=launch is None)
            with (
                open(task.stdout, "ab") as out,
                open(task.stderr, "ab") as err,
                confined.pinned(),
            ):
                popen = subprocess.Popen(
                    argv if launch is None else launch.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=task.workdir,
                    env=env if launch is None else launch.env,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=() if launch is None else launch.pass_fds,
                    preexec_fn=preexec,  # system calls only, no Python locks
                )
        except OSError as e:
            self._free(confined)
            if launch is not None:
                launch.abandon()
            what = task.spec.command[0]
            if isinstance(e, FileNotFoundError):
                raise LaunchError(f"command not found: {what}", 127) from e
            if isinstance(e, PermissionError):
                raise LaunchError(f"permission denied: {what}", 126) from e
            raise LaunchError(f"cannot start {what}: {e}", 126) from e
        except BaseException:
            self._free(confined)
            if launch is not None:
                launch.abandon()
            raise
        if launch is not None:
            launch.started()
        started = time.time()
        loop = asyncio.get_running_loop()
        proc = _Proc(
            popen,
            started,
            loop.create_future(),
            confined=confined,
            report=None if launch is None else launch.report,
        )
        self._procs[task.key] = proc
        self._write_pid(task, popen.pid, started)
        self._watch(proc)
        return started

    def _watch(self, proc: _Proc) -> None:
        loop = asyncio.get_running_loop()
        pid = proc.popen.pid
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            loop.run_in_executor(None, _reap_blocking, proc, loop)
            return

        def ready() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            _reap(proc)

        loop.add_reader(fd, ready)

    async def wait(self, task: Task) -> Outcome:
        proc = self._procs[task.key]
        limit = task.spec.resources.time
        try:
            await asyncio.wait_for(asyncio.shield(proc.exited), limit)
        except TimeoutError:
            await self._stop(
                proc, JobState.FAILED, f"time limit of {format_seconds(limit or 0)} exceeded"
            )
        status, rusage = await proc.exited
        ended = time.time()
        self._procs.pop(task.key, None)
        _kill_group(proc.popen.pid, signal.SIGKILL)  # stragglers left in the background
        _signal_all(proc.descendants, signal.SIGKILL)
        self._pid_file(task).unlink(missing_ok=True)
        code = os.waitstatus_to_exitcode(status)
        usage = Usage(
            wall_seconds=max(0.0, ended - proc.started_at),
            cpu_seconds=(rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
            max_rss_bytes=(rusage.ru_maxrss * 1024) if rusage else 0,
        )
        unrun = ""
        peak = usage.max_rss_bytes  # what tells of a memory overrun
        if proc.report is not None:  # bwrap passes a signal's death on as 128 + N
            seen = await asyncio.to_thread(sandbox_.reaped, proc.report)
            usage.cpu_seconds, usage.max_rss_bytes = seen.cpu, seen.max_rss
            # At the reaper's own, the job's peak says nothing of the job.
            peak = seen.max_rss if seen.max_rss > seen.base_rss + (1 << 20) else 0
            what = task.spec.command[0]
            if seen.status is None:
                if proc.stop_state is None and code != -signal.SIGKILL:
                    unrun = f"the job's sandbox failed (bwrap exited {code}; see its stderr)"
            else:
                code = seen.status
            if seen.error:  # the job's command could not be run
                unrun = (
                    f"command not found: {what}"
                    if code == 127
                    else f"cannot run {what}: {seen.error}"
                )
        exit_code = code if code >= 0 else 128 - code
        if proc.stop_state is not None:
            state, reason = proc.stop_state, proc.stop_reason
        elif unrun:
            state, reason = JobState.FAILED, unrun
        elif code == 0:
            state, reason = JobState.COMPLETE, ""
        elif code < 0:
            state, reason = JobState.FAILED, f"killed by {_signal_name(-code)}"
        else:
            state, reason = JobState.FAILED, f"exit code {code}"
        if proc.confined is not None:
            failed = state is JobState.FAILED and proc.stop_state is None
            why = proc.confined.overrun(failed, peak, task.stderr)
            if why is not None:
                state, reason = JobState.FAILED, f"{why} ({reason})" if reason else why
            self._free(proc.confined)
        return Outcome(state, exit_code, reason, proc.started_at, ended, usage)

    async def stop(self, task: Task, state: JobState, reason: str) -> None:
        proc = self._procs.get(task.key)
        if proc is not None and not proc.exited.done():
            await self._stop(proc, state, reason)

    async def _stop(self, proc: _Proc, state: JobState, reason: str) -> None:
        """SIGTERM to the whole tree, then SIGKILL to whatever is left after the grace."""
        if proc.stop_state is None:
            proc.stop_state, proc.stop_reason = state, reason
        proc.descendants = _descendants(proc.popen.pid)
        if not proc.boxed:  # bwrap would die of it at once, and the grace with it
            _kill_group(proc.popen.pid, signal.SIGTERM)
        _signal_all(proc.descendants, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.exited), self.kill_grace)
        _kill_group(proc.popen.pid, signal.SIGKILL)
        _signal_all(proc.descendants, signal.SIGKILL)

    def _pid_file(self, task: Task) -> Path:
        """Kept in the agent's state, not the job's directory: a job that could write it
        would have a restarted agent kill any process it names."""
        return self._pids / f"{task.workdir.name}.json"

    def _write_pid(self, task: Task, pid: int, started: float) -> None:
        job_files.write(self._pid_file(task), json.dumps({"pid": pid, "started_at": started}))

    def _read_pid(self, task: Task) -> tuple[int, float] | None:
        try:
            data = json.loads(job_files.read(self._pid_file(task)))
            return int(data["pid"]), float(data["started_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def recover(self, task: Task) -> bool:
        """A process started by an earlier agent is no longer this one's child: its exit
        status cannot be collected, so it is stopped and reported as lost."""
        info = self._read_pid(task)
        if info is None:
            return False
        pid, started = info
        self._pid_file(task).unlink(missing_ok=True)
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) > 2:
                return False  # the pid now belongs to someone else
        except psutil.Error:
            return False
        procs = [p, *_descendants(pid)]
        _kill_group(pid, signal.SIGKILL)
        _signal_all(procs, signal.SIGKILL)
        log.warning("stopped %s (pid %d), left running by an earlier agent", task.key, pid)
        return False


def _reap(proc: _Proc) -> None:
    try:
        _pid, status, rusage = os.wait4(proc.popen.pid, 0)
    except ChildProcessError:
        status, rusage = 0, None
    proc.popen.returncode = os.waitstatus_to_exitcode(status)
    if not proc.exited.done():
        proc.exited.set_result((status, rusage))


def _reap_blocking(proc: _Proc, loop: asyncio.AbstractEventLoop) -> None:
    try:
        _pid, status, rusage = os.wait4(proc.popen.pid, 0)
    except ChildProcessError:
        status, rusage = 0, None

    def done() -> None:
        proc.popen.returncode = os.waitstatus_to_exitcode(status)
        if not proc.exited.done():
            proc.exited.set_result((status, rusage))

    loop.call_soon_threadsafe(done)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:  # a real-time signal
        return f"signal {n}"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
