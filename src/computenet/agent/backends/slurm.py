"""Runs tasks as batch jobs on a Slurm cluster, through Slurm's own commands.

The agent talks to Slurm only through ``sbatch``, ``squeue``, ``scancel``, ``scontrol`` and,
where accounting is on, ``sacct``. Each runs as a subprocess with a timeout, so the agent needs
no Slurm library, works with any Slurm its user can submit to, and never blocks its event
loop. Every job carries ``cnet:<job>#<attempt>`` in its Slurm comment, and its Slurm id is
kept in its working directory, so a restarted agent finds the job again.

One ``squeue`` call per poll interval follows all the jobs this agent tracks, however many
there are. A job's end is read from that same call while slurmctld still remembers the job
(``MinJobAge``, 300 s by default), and from ``sacct`` after that.

See docs/slurm.md for the options and for how a job's resources become Slurm's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shlex
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from computenet.agent.backends.base import Backend, LaunchError, Outcome, Task, format_seconds
from computenet.agent.probe import safe_name
from computenet.model import Device, DeviceKind, JobState, Machine, TelemetrySample, Usage

log = logging.getLogger("computenet.agent")

# Files the backend keeps in a task's working directory.
SCRIPT = "slurm.sh"  # the batch script: exports the job's environment, execs its argv
JOB_ID_FILE = "slurm_job_id"  # Slurm's id for the job, written as soon as sbatch answers
START_FILE = "slurm_start"  # written by the job itself the moment it starts (sub-second)
RUNNING_FILE = "slurm_running"  # written when start() returned, i.e. the node was told RUNNING
LAUNCH_ERROR_FILE = "launch_error"  # written by the job when its program does not exist

MIB = 2**20
MISSES_BEFORE_GONE = 3  # squeue answers that must miss a job before it counts as forgotten
CANCEL_RESEND = 10.0  # seconds before an scancel that did not take is sent again
STAMP_GRACE = 2.0  # seconds a running job has to write its start stamp before Slurm's is used
QUEUE_CHUNK = 500  # job ids per squeue call

# Slurm's base job states: which mean "it ran" and which mean "it is over".
ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)
STARTED = ENDED | {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}
# Reasons a pending job keeps for good: the request exceeds what its partition allows.
NEVER_STARTS = {
    "BadConstraints": "no node meets its constraints",
    "PartitionConfig": "it asks for more than the partition allows (CPUs, memory, account or QoS)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "its time limit (--time) is over the partition's MaxTime",
}
# slurmctld first says PartitionConfig of any such job, and the particular reason a
# moment later: a job keeps one of these this long before it is failed with it.
NEVER_SETTLE = 5.0
END_REASONS = {
    "BOOT_FAIL": "the Slurm node failed to boot",
    "DEADLINE": "Slurm's deadline for the job passed",
    "NODE_FAIL": "the Slurm node running the job failed",
    "OUT_OF_MEMORY": "out of memory",
    "PREEMPTED": "preempted by Slurm",
    "REVOKED": "revoked by Slurm",
    "UNKNOWN": "Slurm no longer knows the job and keeps no accounting of how it ended",
}
# Slurm binds these to the GPUs it allocated; the agent's pool-wide numbering must not win.
SLURM_BOUND_ENV = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
        "ZE_AFFINITY_MASK",
        "CNET_DEVICES",  # Slurm picks the devices; the pool's indices would not be them
    }
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# squeue's long format with "|" as each field's suffix; Comment is last since it is free text.
QUEUE_FORMAT = "JobID:|,State:|,Exit_Code:|,StartTime:|,EndTime:|,Reason:|,Comment:|"
RECORD_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/.]*)=")
NVIDIA_GPU = re.compile(r"nvidia|tesla|geforce|quadro|rtx|gtx|\b[abhklpvt]\d{1,3}\b|gh200|gb200")
AMD_GPU = re.compile(r"amd|radeon|instinct|\bmi\d{2,3}")


class SlurmError(Exception):
    """A Slurm command failed; the message is Slurm's own, which is what a user can act on."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class QueueRow:
    """One job as ``squeue`` shows it; times are epoch seconds (whole), None when unset."""

    job_id: str
    state: str
    status: int  # the raw wait status of the batch script, as waitpid gives it
    start: float | None
    end: float | None
    reason: str
    comment: str


@dataclass(frozen=True)
class End:
    """How Slurm says a job ended, from squeue or sacct, and when this agent learned it."""

    state: str
    exit_code: int | None
    signal: int
    start: float | None
    end: float | None
    seen_at: float


@dataclass
class _Job:
    key: str
    workdir: Path
    submitted_at: float
    started: asyncio.Future[float]
    ended: asyncio.Future[End]
    slurm_id: str = ""
    stop_state: JobState | None = None
    stop_reason: str = ""
    cancel_sent_at: float = 0.0
    running_seen_at: float = 0.0
    misses: int = 0
    stuck_since: float = 0.0  # when a reason it would never start for was first seen


class SlurmBackend(Backend):
    """Fronts one Slurm partition: its nodes are the pool's machines, its queue runs the work.

    Options (all strings, as ``cnet agent run -o key=value`` passes them):
    ``partition`` to submit to (default: the cluster's default partition); ``conf``, the
    slurm.conf to use (default: ``$SLURM_CONF``, else Slurm's built-in path); ``bin_dir``
    where the Slurm commands are (default: ``$PATH``); ``account`` and ``qos`` for sbatch;
    ``poll``, seconds between squeue calls; ``timeout``, seconds any one command may take;
    ``queue``, how much work beyond the partition's size to keep waiting in Slurm's own
    queue, as a multiple of it (default 2); ``login_env``, ``true`` to start each job in
    the Slurm user's login environment (``--export=NONE``), which has slurmd run a login
    shell first and so adds a fraction of a second to every job's start.
    """

    name = "slurm"
    # Slurm jobs live on without the agent and are re-attached by ``recover``; an agent that
    # honours this leaves them running when it stops, instead of canceling them.
    survives_agent = True

    def __init__(
        self,
        partition: str = "",
        conf: str = "",
        bin_dir: str = "",
        account: str = "",
        qos: str = "",
        poll: float | str = 1.0,
        timeout: float | str = 30.0,
        queue: float | str = 2.0,
        login_env: bool | str = False,
    ) -> None:
        self.queue_factor = max(0.0, float(queue))
        self.login_env = _flag("login_env", login_env)
        self.partition = partition
        self.account = account
        self.qos = qos
        self.poll = max(0.1, float(poll))
        self.timeout = max(1.0, float(timeout))
        self.search_path = bin_dir or os.environ.get("PATH", os.defpath)
        if conf and not os.path.isfile(conf):  # else every command waits out its timeout
            raise ValueError(f"conf: {conf} is not a file (the cluster's slurm.conf)")
        self.env = command_env(conf, os.environ)
        self.pool_partition = partition  # the partition inventory and telemetry describe
        self._jobs: dict[str, _Job] = {}
        self._poller: asyncio.Task[None] | None = None
        self._last_sample: TelemetrySample | None = None
        self._machines: list[Machine] = []
        self._sacct_works = True

    # --- talking to Slurm ---------------------------------------------------------------

    def _binary(self, command: str) -> str:
        found = shutil.which(command, path=self.search_path)
        if found is None:
            raise SlurmError(f"{command} not found on {self.search_path}")
        return found

    async def _run(self, command: str, *args: str, cwd: Path | None = None) -> str:
        """Runs one Slurm command. Queries get epoch times; sbatch does not, because the
        SLURM_* variables it sees are handed on to the job."""
        env = dict(self.env)
        if command == "sbatch":
            env.pop("LC_ALL", None)  # handed on to the job, whose locale it is not
        else:
            env["SLURM_TIME_FORMAT"] = "%s"
        proc = await asyncio.create_subprocess_exec(
            self._binary(command),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if isinstance(e, TimeoutError):
                msg = f"{command} did not answer within {self.timeout:g}s"
                raise SlurmError(msg, timed_out=True) from None
            raise
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            raise SlurmError(text or f"{command} exited with code {proc.returncode}")
        return out.decode(errors="replace")

    async def _queue(self, ids: Iterable[str] = (), mine: bool = False) -> dict[str, QueueRow]:
        """The jobs named (or all of this user's), in any state slurmctld still remembers."""
        ids = list(ids)
        rows: dict[str, QueueRow] = {}
        chunks = [["--me"]] if mine else []
        chunks += [
            [f"--jobs={','.join(ids[i : i + QUEUE_CHUNK])}"]
            for i in range(0, len(ids), QUEUE_CHUNK)
        ]
        for selector in chunks:
            try:
                text = await self._run(
                    "squeue", "--noheader", "--states=all", *selector, f"--Format={QUEUE_FORMAT}"
                )
            except SlurmError as e:
                if "Invalid job id" in str(e):
                    continue  # squeue's answer when the only job asked for is forgotten
                raise
            rows.update(parse_queue(text))
        return rows

    async def _accounting(self, slurm_id: str) -> End | None:
        """How a job slurmctld has forgotten ended, from sacct; None where accounting is off."""
        if not self._sacct_works or shutil.which("sacct", path=self.search_path) is None:
            return None
        try:
            text = await self._run(
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                f"--jobs={slurm_id}",
                "--format=JobID,State,ExitCode,Start,End",
            )
        except SlurmError as e:
            if "accounting storage is disabled" in str(e).lower():
                self._sacct_works = False
            log.info("sacct cannot tell how Slurm job %s ended: %s", slurm_id, e)
            return None
        return parse_sacct(text, slurm_id, time.time())

    async def _nodes(self) -> list[dict[str, str]]:
        records = parse_records(await self._run("scontrol", "--oneliner", "show", "node"))
        return [r for r in records if in_partition(r, self.pool_partition)]

    # --- the Backend interface ----------------------------------------------------------

    async def open(self, state_dir: Path, private: tuple[Path, ...] = ()) -> None:
        """Fails fast, with Slurm's own words, when the cluster or partition is unusable."""
        for command in ("sbatch", "squeue", "scancel", "scontrol"):
            self._binary(command)
        parts = parse_records(await self._run("scontrol", "--oneliner", "show", "partition"))
        names = [p.get("PartitionName", "") for p in parts]
        if self.partition and self.partition not in names:
            raise SlurmError(
                f"Slurm has no partition {self.partition!r}; it has: {', '.join(names) or 'none'}"
            )
        if not self.partition:
            default = [p["PartitionName"] for p in parts if p.get("Default") == "YES"]
            self.pool_partition = default[0] if default else ""
        log.info("fronting Slurm partition %s", self.pool_partition or "(all nodes)")

    async def inventory(self, state_dir: Path) -> list[Machine]:
        nodes = await self._nodes()
        if not nodes:
            raise SlurmError(f"Slurm partition {self.pool_partition!r} has no nodes")
        self._machines = machines_from(nodes)
        return self._machines

    async def unavailable(self) -> str | None:
        try:
            await self._nodes()
        except SlurmError as e:
            return f"Slurm does not answer: {e}"
        return None

    async def sample(self, state_dir: Path, running: int) -> TelemetrySample:
        """The partition as Slurm sees it. A heartbeat must go out even when slurmctld does
        not answer, so a failed query repeats the last sample instead of raising."""
        try:
            nodes = await self._nodes()
            queue = await self._run(
                "squeue",
                "--noheader",
                "--states=RUNNING,PENDING",
                "--format=%T",
                *([f"--partition={self.pool_partition}"] if self.pool_partition else []),
            )
        except SlurmError as e:
            log.warning("Slurm telemetry unavailable: %s", e)
            last = self._last_sample
            if last is None:
                return TelemetrySample(
                    time=time.time(),
                    cpu_percent=0,
                    load_1m=0,
                    memory_used_bytes=0,
                    memory_total_bytes=0,
                    running_jobs=running,
                )
            return last.model_copy(update={"time": time.time()})
        states = queue.split()
        self._last_sample = telemetry_from(
            nodes, states.count("RUNNING"), time.time(), queued=states.count("PENDING")
        )
        return self._last_sample

    async def start(self, task: Task) -> float:
        """Submits the job and returns once Slurm has started it, with the time it did.

        Returning at submission would tell the node the job runs while it waits in Slurm's
        queue, and count that wait against its time limit.
        """
        unfit = misfit(task, self._machines)
        if unfit:
            raise LaunchError(unfit, 126)
        task.workdir.mkdir(parents=True, exist_ok=True)
        script = write_script(task)
        job = self._track(task, submitted_at=time.time())
        try:
            out = await self._run(
                "sbatch",
                *sbatch_args(task, self.partition, self.account, self.qos, self.login_env),
                str(script),
                cwd=task.workdir,
            )
        except SlurmError as e:
            self._jobs.pop(task.key, None)
            if e.timed_out:
                await self._cancel_by_comment(task)
            raise LaunchError(f"Slurm refused the job: {e}", 126) from e
        job.slurm_id = out.strip().split(";")[0]
        (task.workdir / JOB_ID_FILE).write_text(job.slurm_id + "\n")
        log.info("%s is Slurm job %s", task.key, job.slurm_id)
        if job.stop_state is not None:  # stopped while sbatch ran
            await self._scancel(job)
        self._ensure_poller()
        started = await job.started
        (task.workdir / RUNNING_FILE).write_text(f"{started!r}\n")
        return started

    async def wait(self, task: Task) -> Outcome:
        job = self._jobs[task.key]
        await job.started
        limit = task.spec.resources.time
        if limit:
            await self._enforce(job, limit)
        end = await job.ended
        self._jobs.pop(task.key, None)
        return outcome(job, end, limit, _read_text(task.workdir / LAUNCH_ERROR_FILE))

    async def stop(self, task: Task, state: JobState, reason: str) -> None:
        """Cancels the whole Slurm job; ``wait`` reports ``state`` once Slurm confirms."""
        job = self._jobs.get(task.key)
        if job is None or job.ended.done():
            return
        if job.stop_state is None:
            job.stop_state, job.stop_reason = state, reason
        if job.slurm_id:
            await self._scancel(job)

    async def recover(self, task: Task) -> bool:
        """Re-attaches to the task's Slurm job, found by its stored id or by its comment.

        A job the node was never told is RUNNING (the agent stopped while Slurm still queued
        it) is canceled instead: a final report for it would be refused, as the node cannot
        go from SCHEDULED straight to an end.
        """
        slurm_id = _read_text(task.workdir / JOB_ID_FILE) or await self._find_by_comment(task)
        if not slurm_id:
            return False
        try:
            row = (await self._queue([slurm_id])).get(slurm_id)
        except SlurmError as e:
            log.warning("cannot ask Slurm about job %s (%s); following it anyway", slurm_id, e)
            row = end = None
        else:
            end = None if row is not None else await self._accounting(slurm_id)
            if row is None and end is None:
                return False  # gone, and how it ended is not recorded
        reported = _read_float(task.workdir / RUNNING_FILE)
        if reported is None:
            if row is not None and row.state not in ENDED:
                await self._scancel_id(slurm_id)
            return False
        job = self._track(task, submitted_at=0.0)
        job.slurm_id = slurm_id
        job.started.set_result(reported)
        if row is not None:
            self._observe(job, row, time.time())
        elif end is not None:
            job.ended.set_result(end)
        self._ensure_poller()
        return True

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    # --- following jobs -----------------------------------------------------------------

    def _track(self, task: Task, submitted_at: float) -> _Job:
        loop = asyncio.get_running_loop()
        job = _Job(task.key, task.workdir, submitted_at, loop.create_future(), loop.create_future())
        self._jobs[task.key] = job
        return job

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_loop(), name="slurm-poll")

    async def _poll_loop(self) -> None:
        while any(not j.ended.done() for j in self._jobs.values()):
            try:
                await self._poll_once()
            except Exception:
                log.exception("following Slurm jobs failed; trying again")
            await asyncio.sleep(self.poll)

    async def _poll_once(self) -> None:
        jobs = [j for j in self._jobs.values() if j.slurm_id and not j.ended.done()]
        if not jobs:
            return
        try:
            rows = await self._queue(j.slurm_id for j in jobs)
        except SlurmError as e:
            log.warning("squeue failed, will retry: %s", e)
            return
        now = time.time()
        for job in jobs:
            row = rows.get(job.slurm_id)
            if row is not None:
                job.misses = 0
                self._observe(job, row, now)
                if row.state != "PENDING" or row.reason not in NEVER_STARTS:
                    job.stuck_since = 0.0
                elif row.state == "PENDING" and row.reason in NEVER_STARTS:
                    job.stuck_since = job.stuck_since or now
                    if row.reason != "PartitionConfig" or now - job.stuck_since >= NEVER_SETTLE:
                        why = NEVER_STARTS[row.reason]
                        await self._fail(job, f"Slurm cannot run the job: {why} ({row.reason})")
            else:
                job.misses += 1
                if job.misses >= MISSES_BEFORE_GONE:
                    await self._forgotten(job, now)
            if self._cancel_pending(job, now):
                await self._scancel(job)

    @staticmethod
    def _cancel_pending(job: _Job, now: float) -> bool:
        """An scancel can be lost (slurmctld busy or restarting): it is sent again."""
        stale = now - job.cancel_sent_at >= CANCEL_RESEND
        return job.stop_state is not None and not job.ended.done() and stale

    async def _fail(self, job: _Job, reason: str) -> None:
        if job.stop_state is None:
            log.warning("Slurm job %s: %s", job.slurm_id, reason)
            job.stop_state, job.stop_reason = JobState.FAILED, reason
            await self._scancel(job)

    def _observe(self, job: _Job, row: QueueRow, now: float) -> None:
        if row.state in STARTED and not job.started.done() and self._stamped(job, row, now):
            job.started.set_result(self._start_time(job, row.start, now))
        if row.state in ENDED and not job.ended.done():
            code, sig = split_status(row.status)
            job.ended.set_result(End(row.state, code, sig, row.start, row.end, now))

    @staticmethod
    def _stamped(job: _Job, row: QueueRow, now: float) -> bool:
        """Whether to take the start now: a job Slurm says runs writes its own stamp within
        moments, and that stamp is more exact than Slurm's whole-second StartTime."""
        if row.state in ENDED or (job.workdir / START_FILE).exists():
            return True
        job.running_seen_at = job.running_seen_at or now
        return now - job.running_seen_at >= STAMP_GRACE

    async def _forgotten(self, job: _Job, now: float) -> None:
        """slurmctld no longer lists the job: its end comes from accounting, if kept."""
        end = await self._accounting(job.slurm_id) or End("UNKNOWN", None, 0, None, None, now)
        if not job.started.done():
            job.started.set_result(self._start_time(job, end.start, now))
        if not job.ended.done():
            job.ended.set_result(end)

    def _start_time(self, job: _Job, slurm_start: float | None, now: float) -> float:
        """The job's own stamp when it has written it; else Slurm's StartTime, which is whole
        seconds and so may precede the submission by a fraction of one."""
        stamp = _read_float(job.workdir / START_FILE)
        best = stamp if stamp is not None else (slurm_start if slurm_start else now)
        return min(now, max(best, job.submitted_at))

    async def _enforce(self, job: _Job, limit: float) -> None:
        """Stops the job once it outlives its limit, to the second. Slurm's own --time only
        counts whole minutes, and stays as the backstop for when the agent is away."""
        while not job.ended.done():
            remaining = self._deadline(job, limit) - time.time()
            if remaining <= 0:
                reason = f"time limit of {format_seconds(limit)} exceeded"
                if job.stop_state is None:
                    job.stop_state, job.stop_reason = JobState.FAILED, reason
                await self._scancel(job)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.ended), remaining)

    def _deadline(self, job: _Job, limit: float) -> float:
        """Counted from the job's own start stamp; without one, from the latest moment the
        job can have started, so that no job is stopped before its time is up."""
        stamp = _read_float(job.workdir / START_FILE)
        if stamp is not None:
            return stamp + limit
        return job.started.result() + 1.0 + limit

    async def _scancel(self, job: _Job) -> None:
        """Cancels a followed job; the poller sees it end, and sends scancel again if not."""
        first = job.cancel_sent_at == 0.0
        job.cancel_sent_at = time.time()
        if first and job.started.done():
            await self._hold_still(job.slurm_id)
        await self._scancel_id(job.slurm_id)
        self._ensure_poller()

    async def _hold_still(self, slurm_id: str) -> None:
        """Slurm signals a job's processes one by one, so a shell whose child dies first could
        run its next line before its own signal comes. Stopped, then handed SIGTERM while
        stopped, every process meets its end together when the cancel sends SIGCONT."""
        for sig in ("STOP", "TERM"):
            try:
                await self._run("scancel", "--full", f"--signal={sig}", slurm_id)
            except SlurmError as e:
                log.debug("scancel --signal=%s %s: %s", sig, slurm_id, e)

    async def _scancel_id(self, slurm_id: str) -> None:
        try:
            await self._run("scancel", slurm_id)
        except SlurmError as e:
            log.warning("scancel %s failed: %s", slurm_id, e)

    async def _find_by_comment(self, task: Task) -> str:
        try:
            rows = await self._queue(mine=True)
        except SlurmError as e:
            log.warning("cannot search Slurm for %s: %s", task.key, e)
            return ""
        wanted = comment(task)
        found = [r.job_id for r in rows.values() if r.comment == wanted]
        return found[-1] if found else ""

    async def _cancel_by_comment(self, task: Task) -> None:
        """sbatch timed out, so the job may exist anyway: it must not run unfollowed."""
        slurm_id = await self._find_by_comment(task)
        if slurm_id:
            await self._scancel_id(slurm_id)


# --- translating a task into Slurm's terms --------------------------------------------------


def comment(task: Task) -> str:
    return f"cnet:{task.key}"


def sbatch_args(
    task: Task, partition: str = "", account: str = "", qos: str = "", login_env: bool = False
) -> list[str]:
    """One task on one node: Slurm counts whole CPUs and MiB, and time in whole minutes.

    The node requeues failed work itself, so Slurm must not requeue behind its back. The
    job gets sbatch's own environment, which the agent keeps to a few plain variables
    (``command_env``), and the script's exports on top.
    """
    req = task.spec.resources
    args = [
        "--parsable",
        f"--job-name=cnet-{task.job_id}",
        f"--comment={comment(task)}",
        f"--chdir={task.workdir}",
        f"--output={_literal_path(task.stdout)}",
        f"--error={_literal_path(task.stderr)}",
        "--open-mode=append",
        "--export=NONE" if login_env else "--export=ALL",
        "--no-requeue",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, math.ceil(req.cpus))}",
    ]
    if partition:
        args.append(f"--partition={partition}")
    if account:
        args.append(f"--account={account}")
    if qos:
        args.append(f"--qos={qos}")
    if req.memory > 0:
        args.append(f"--mem={math.ceil(req.memory / MIB)}M")
    if req.gpus > 0:
        args.append(f"--gres=gpu:{req.gpus}")
    if req.time:
        args.append(f"--time={math.ceil(req.time / 60)}")
    return args


def misfit(task: Task, machines: list[Machine]) -> str:
    """Why no node of the partition could ever run the task, or "" if one could.

    The node checks a request against the pool's total; Slurm places a job on one node, and
    a request that no node can hold would otherwise wait in Slurm's queue for good.
    """
    if not machines:
        return ""
    req = task.spec.resources
    cpus = max(1, math.ceil(req.cpus))
    for m in machines:
        gpus = sum(1 for d in m.devices if d.kind is not DeviceKind.cpu)
        if m.cpus >= cpus and m.memory_bytes >= req.memory and gpus >= req.gpus:
            return ""
    biggest = max(machines, key=lambda m: m.cpus)
    return (
        f"no Slurm node can hold {cpus} CPUs, {math.ceil(req.memory / MIB)} MiB and "
        f"{req.gpus} GPUs in one job (the largest node, {biggest.name}, has {biggest.cpus} CPUs)"
    )


def write_script(task: Task) -> Path:
    """The batch script: the job's environment as exports, then its argv, exec'd verbatim.

    A script file rather than ``--export``, whose comma-separated list cannot carry every
    value, and rather than ``--wrap``, which Slurm hands to a shell as one string.
    """
    path = task.workdir / SCRIPT
    path.write_text(batch_script(task))
    path.chmod(0o700)
    return path


def batch_script(task: Task) -> str:
    program = task.spec.command[0]
    not_found = shlex.quote(f"command not found: {program}")
    lines = [
        "#!/bin/sh",
        f"# computenet job {task.job_id}, attempt {task.attempt}: runs the command as submitted.",
    ]
    for key, value in job_environment(task).items():
        lines.append(f"export {key}={shlex.quote(value)}")
    lines += [
        f"date +%s.%N > {shlex.quote(str(task.workdir / START_FILE))} 2>/dev/null",
        f"if ! command -v {shlex.quote(program)} >/dev/null 2>&1; then",
        f"    echo {not_found} > {shlex.quote(str(task.workdir / LAUNCH_ERROR_FILE))}",
        "    exit 127",
        "fi",
        f"exec {shlex.join(task.spec.command)}",
        "",
    ]
    return "\n".join(lines)


def job_environment(task: Task) -> dict[str, str]:
    """What the agent prepared, less the GPU bindings that Slurm makes for its allocation
    (unless the user set one explicitly). A job given no accelerator knows it has none:
    ``CNET_DEVICES`` is ``[]``, as on every backend."""
    env = {
        k: v
        for k, v in task.env.items()
        if ENV_NAME.match(k) and (k not in SLURM_BOUND_ENV or k in task.spec.env)
    }
    if not task.devices:
        env.setdefault("CNET_DEVICES", "[]")
    return env


def _flag(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"option {name} takes true or false, not {value!r}")


def _literal_path(path: Path) -> str:
    """Slurm expands %j and friends in --output and --error; a literal % is written %%."""
    return str(path).replace("%", "%%")


def command_env(conf: str, base: Mapping[str, str]) -> dict[str, str]:
    """An explicit environment for the Slurm commands: inherited SLURM_*/SBATCH_* input
    variables would reshape submissions, and the agent's secrets have no business there."""
    env = {k: base[k] for k in ("PATH", "HOME", "USER", "LOGNAME") if k in base}
    conf = conf or base.get("SLURM_CONF", "")
    if conf:
        env["SLURM_CONF"] = conf
    env["LC_ALL"] = "C"
    return env


# --- reading Slurm's answers ----------------------------------------------------------------


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol --oneliner show ...`` lines as dicts. Values may hold spaces (OS=Linux 6.1
    #1 SMP), so a key is a word followed by '=' at the start or after whitespace."""
    records = []
    for line in text.splitlines():
        keys = list(RECORD_KEY.finditer(line))
        record = {}
        for m, nxt in zip(keys, [*keys[1:], None], strict=True):
            stop = nxt.start() if nxt is not None else len(line)
            record[m.group(1)] = line[m.end() : stop].strip()
        if record:
            records.append(record)
    return records


def parse_queue(text: str) -> dict[str, QueueRow]:
    rows = {}
    for line in text.splitlines():
        parts = line.split("|", 6)
        if len(parts) < 7 or not parts[0].strip():
            continue
        job_id, state, status, start, end, reason, rest = (p.strip() for p in parts)
        rows[job_id] = QueueRow(
            job_id=job_id,
            state=state.split()[0] if state else "",
            status=int(status) if status.isdigit() else 0,
            start=_epoch(start),
            end=_epoch(end),
            reason=reason,
            comment=rest.removesuffix("|"),
        )
    return rows


def parse_sacct(text: str, slurm_id: str, now: float) -> End | None:
    """``sacct --parsable2`` rows: State may read "CANCELLED by 1000", ExitCode "code:signal"."""
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or parts[0] != slurm_id or not parts[1]:
            continue
        state = parts[1].split()[0]
        code, _, sig = parts[2].partition(":")
        signum = int(sig) if sig.isdigit() else 0
        exit_code = 128 + signum if signum else int(code) if code.isdigit() else None
        return End(state, exit_code, signum, _epoch(parts[3]), _epoch(parts[4]), now)
    return None


def split_status(status: int) -> tuple[int, int]:
    """A raw wait status as squeue's Exit_Code gives it -> (shell exit code, signal)."""
    sig = status & 0x7F
    if sig:
        return 128 + sig, sig
    return (status >> 8) & 0xFF, 0


def in_partition(node: dict[str, str], partition: str) -> bool:
    return not partition or partition in node.get("Partitions", "").split(",")


def machines_from(nodes: list[dict[str, str]]) -> list[Machine]:
    """Each Slurm node becomes a machine; GPUs are numbered across the pool, as everywhere."""
    machines: list[Machine] = []
    taken: set[str] = set()
    gpus = 0
    for node in nodes:
        name = _unique(safe_name(node.get("NodeName", ""), "node"), taken)
        arch = node.get("Arch", "")
        devices = [
            Device(
                kind=DeviceKind.cpu,
                name="cpu0",
                index=0,
                vendor="arm" if arch in ("aarch64", "arm64") else "unknown",
                model="",
                arch=arch,
            ),
            *gpu_devices(node.get("Gres", ""), gpus),
        ]
        gpus += len(devices) - 1
        machines.append(
            Machine(
                name=name,
                hostname=node.get("NodeHostName", "")[:128],
                os=node.get("OS", "")[:128],
                arch=arch[:128],
                cpus=max(1, _int(node.get("CPUTot"))),
                memory_bytes=_int(node.get("RealMemory")) * MIB,
                disk_bytes=_int(node.get("TmpDisk")) * MIB,
                devices=devices,
            )
        )
    return machines


def gpu_devices(gres: str, first_index: int = 0) -> list[Device]:
    """``Gres=gpu:a100:4(S:0-1),gpu:2,mps:100`` -> one GPU device per gpu counted."""
    out: list[Device] = []
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = int(parts[-1]) if parts[-1].isdigit() else 1
        kind = parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) else ""
        for _ in range(count):
            local = len(out)
            out.append(
                Device(
                    kind=DeviceKind.gpu,
                    name=f"gpu{local}",
                    index=first_index + local,
                    vendor=gpu_vendor(kind),
                    model=kind[:128] or "gpu",
                )
            )
    return out


def gpu_vendor(gres_type: str) -> str:
    text = gres_type.lower()
    if AMD_GPU.search(text):
        return "amd"
    if NVIDIA_GPU.search(text):
        return "nvidia"
    return "unknown"


def telemetry_from(
    nodes: list[dict[str, str]], running_jobs: int, now: float, queued: int = 0
) -> TelemetrySample:
    """CPU percent is the share of CPUs Slurm has allocated, since allocation is what makes
    the next job wait; load is the sum of the nodes' load averages; memory used is the larger
    of what jobs reserved and what the nodes report in use."""
    cpus = sum(_int(n.get("CPUTot")) for n in nodes)
    alloc = sum(_int(n.get("CPUAlloc")) for n in nodes)
    total = used = 0
    for n in nodes:
        real = _int(n.get("RealMemory"))
        free = n.get("FreeMem", "")
        in_use = real - _int(free) if free.isdigit() else 0
        total += real
        used += min(real, max(_int(n.get("AllocMem")), in_use, 0))
    return TelemetrySample(
        time=now,
        cpu_percent=100.0 * alloc / cpus if cpus else 0.0,
        load_1m=sum(_float(n.get("CPULoad")) for n in nodes),
        memory_used_bytes=used * MIB,
        memory_total_bytes=total * MIB,
        disk_total_bytes=sum(_int(n.get("TmpDisk")) for n in nodes) * MIB,
        running_jobs=running_jobs,
        queued_jobs=queued,
        free_cpus=max(0, cpus - alloc),
    )


def outcome(job: _Job, end: End, limit: float | None, launch_error: str) -> Outcome:
    """The end as the agent reports it. A job canceled before its script ran has no exit
    code; Slurm's whole-second EndTime is narrowed by when the agent saw the end."""
    state, reason = verdict(end, job.stop_state, job.stop_reason, limit, launch_error)
    ran = (job.workdir / START_FILE).exists() or bool(end.exit_code)
    start = _read_float(job.workdir / START_FILE) or job.started.result()
    ended = end.seen_at if end.end is None else min(end.seen_at, end.end + 1.0)
    ended = max(ended, start)
    usage = Usage(wall_seconds=ended - start)
    return Outcome(state, end.exit_code if ran else None, reason, start, ended, usage)


def verdict(
    end: End, stop_state: JobState | None, stop_reason: str, limit: float | None, launch_error: str
) -> tuple[JobState, str]:
    """Slurm's final state in the agent's terms. A job this agent canceled ends the way the
    agent said (canceled, or failed for its time limit); one canceled by someone else in
    Slurm ends CANCELED all the same."""
    if end.state == "COMPLETED" and not end.exit_code:
        return JobState.COMPLETE, ""
    if end.state == "TIMEOUT":
        what = f"time limit of {format_seconds(limit)}" if limit else "Slurm's time limit"
        return JobState.FAILED, f"{what} exceeded"
    if end.state == "CANCELLED":
        if stop_state is not None:
            return stop_state, stop_reason
        return JobState.CANCELED, "canceled in Slurm"
    if launch_error:
        return JobState.FAILED, launch_error
    if end.state in END_REASONS:
        return JobState.FAILED, END_REASONS[end.state]
    if end.signal:
        return JobState.FAILED, f"killed by {_signal_name(end.signal)}"
    if end.exit_code:
        return JobState.FAILED, f"exit code {end.exit_code}"
    return JobState.FAILED, f"Slurm ended the job {end.state}"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name[:60]}-{n}"
    taken.add(candidate)
    return candidate


def _epoch(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None  # N/A, NONE, Unknown
    return value if value > 0 else None


def _int(text: str | None) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        return 0


def _float(text: str | None) -> float:
    try:
        return max(0.0, float(text or 0))
    except ValueError:
        return 0.0


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_float(path: Path) -> float | None:
    try:
        return float(_read_text(path))
    except ValueError:
        return None
