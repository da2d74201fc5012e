"""Runs tasks as Ray jobs, on a cluster the agent joins or on a head it starts itself.

Every task is one Ray job, submitted through the job-submission API of the cluster's
dashboard, so it shows up in Ray's own tools and is placed, limited and stopped by Ray.
The submission id is derived from the job id and attempt: an agent that restarts finds its
jobs again by asking Ray, and nothing but Ray has to survive the restart.

Output takes one of two paths. When the job runs in the agent's own job directory (a local
head, a head on this machine, or nodes that share the agent's filesystem), the entrypoint
redirects stdout and stderr straight into the task's files, so the streams stay apart and
the agent tails them as it tails a local process. With ``job_dir`` (nodes that cannot see
the agent's files) the job runs in a directory on its node and its output comes back
through Ray's job logs, which merge both streams; it is written into ``task.stdout``.

The JobSubmissionClient is blocking (``requests``), and the agent is an asyncio process:
every call goes through a thread, with a deadline, so that an unresponsive cluster delays
reports but never stalls the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from computenet.agent.backends.base import (
    Backend,
    LaunchError,
    Outcome,
    Task,
    format_seconds,
)
from computenet.agent.environment import VENDOR_ENV
from computenet.agent.probe import probe_machine, safe_name
from computenet.model import (
    Device,
    DeviceKind,
    JobState,
    Machine,
    TelemetrySample,
    Usage,
)
from computenet.model.catalog import RUNTIME_ENV

log = logging.getLogger("computenet.agent")
T = TypeVar("T")

POLL = 1.0  # seconds between status rounds while jobs are tracked
CALL_TIMEOUT = 60.0  # for one blocking Ray call
READY_TIMEOUT = 180.0  # for a local head to come up (Ray is slow on small machines)
HEAD_GRACE = 10.0  # SIGTERM to SIGKILL for the local head
STOP_TIMEOUT = 30.0  # after a stop request, how long Ray may take to confirm it
LOST_AFTER = 120.0  # a cluster unreachable this long takes its tracked jobs with it
MISSING_ROUNDS = 3  # status rounds a tracked job may be absent before it counts as lost
PGID_FILE = "ray.pgid"
# Only these decide where the job-submission client goes; the agent's option must win.
RAY_ADDRESS_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
# Ray assigns accelerators to the entrypoint itself; the pool-wide indices would be wrong.
DEVICE_VARS = frozenset(
    {*VENDOR_ENV.values(), *(v for vs in RUNTIME_ENV.values() for v in vs), "CNET_DEVICES"}
)
# Ray's resource names for the device kinds the scheduler counts as accelerators.
ACCELERATORS = {"GPU": DeviceKind.gpu, "NPU": DeviceKind.npu}
# Lines Ray writes into a job's log before the entrypoint starts (runtime env setup).
_RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\t[A-Z]+ \S+:\d+ -- ")


@dataclass
class _Job:
    task: Task
    sid: str
    entrypoint: str
    files: bool  # output goes straight into the task's files (else through Ray's logs)
    started_at: float = 0.0
    limit_at: float | None = None
    # Set when Ray first reports the job running (or over): until then it waits in Ray's queue.
    started: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    done: asyncio.Event = field(default_factory=asyncio.Event)
    details: Any = None  # the latest JobDetails
    missing: int = 0
    stop_state: JobState | None = None
    stop_reason: str = ""
    stop_at: float | None = None  # monotonic time of the stop request


class RayBackend(Backend):
    """A pool that is a Ray cluster.

    ``address`` is the cluster's dashboard (job-submission) address, e.g.
    ``http://head:8265``; without it the agent starts a single-machine head of its own,
    bound to 127.0.0.1, and stops it when it stops. ``num_cpus`` sizes that head (default:
    the CPUs this process may use). ``job_dir`` is a directory on the Ray nodes under which
    each job gets its working directory, for nodes that cannot see the agent's files.
    ``queue``: how much work beyond the cluster's size to keep waiting in Ray's own queue,
    as a multiple of it (default 1), so that Ray starts the next job the moment resources
    free up instead of waiting for the node to send one.
    """

    name = "ray"

    def __init__(
        self,
        address: str = "",
        num_cpus: int | str | None = None,
        job_dir: str = "",
        queue: float | str = 1.0,
    ) -> None:
        self.address = address.strip()
        if self.address.startswith("ray://"):  # else a 30 s wait and a warning from Ray
            raise ValueError(
                "address: ray://… is Ray Client's address; give the dashboard's, http://HEAD:8265"
            )
        self.queue_factor = max(0.0, float(queue))
        self.num_cpus = int(num_cpus) if num_cpus not in (None, "") else None
        if self.address and self.num_cpus is not None:
            raise ValueError("num_cpus sizes a local head; a joined cluster has its own size")
        self.job_dir = job_dir.strip()
        self.url = ""
        self._client: Any = None
        self._http: httpx.AsyncClient | None = None
        self._head: _LocalHead | None = None
        self._jobs: dict[str, _Job] = {}
        self._poller: asyncio.Task[None] | None = None
        self._unreachable_since: float | None = None
        self._machines: list[Machine] = []
        self._accelerators: dict[int, str] = {}  # pool device index → Ray resource name
        self._local_nodes: set[str] = set()  # node ids on this machine

    # --- connection ---------------------------------------------------------------------

    async def open(self, state_dir: Path, private: tuple[Path, ...] = ()) -> None:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as e:
            raise RuntimeError("the ray backend needs Ray: pip install 'computenet[ray]'") from e
        _forget_ray_address_env()
        if self.address:
            url = _dashboard_url(self.address)
        else:
            self._head = _LocalHead(state_dir / "ray", self.num_cpus)
            url = await self._head.open()
        try:
            self._client = await _call(partial(JobSubmissionClient, url))
        except Exception as e:
            if self._head is not None:
                await self._head.close()
            raise RuntimeError(
                f"cannot reach the Ray dashboard at {url}: {_ray_message(e)}; pass the "
                "dashboard address (http://HEAD:8265), not the GCS address (HEAD:6379)"
            ) from e
        self.url = str(self._client.get_address()).rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=10, headers=_auth_header())
        log.info("using the Ray cluster at %s", self.url)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._http is not None:
            await self._http.aclose()
        if self._head is not None:
            await self._head.close()

    # --- what the pool has --------------------------------------------------------------

    async def inventory(self, state_dir: Path) -> list[Machine]:
        """One machine per live Ray node, sized by what Ray will schedule on it, so that the
        node never promises a job more than Ray can place."""
        from ray.util.state import list_nodes

        nodes = await _call(partial(list_nodes, address=self.url, detail=True, limit=10_000))
        here = await asyncio.to_thread(probe_machine, data_root=state_dir)
        local_ips = _local_addresses()
        machines: list[Machine] = []
        self._accelerators, self._local_nodes = {}, set()
        taken: set[str] = set()
        alive = [n for n in nodes if n.state == "ALIVE"]
        for n in sorted(alive, key=lambda n: (not n.is_head_node, n.node_name, n.node_id)):
            if float(n.resources_total.get("CPU", 0)) < 1:
                continue  # every job's entrypoint needs CPUs; such a node can never run one
            local = n.node_ip in local_ips
            if local:
                self._local_nodes.add(n.node_id)
            machines.append(self._machine(n, here if local else None, taken))
        if not machines:
            raise RuntimeError(f"the Ray cluster at {self.url} has no live node with CPUs")
        self._machines = machines
        return machines

    def _machine(self, node: Any, here: Machine | None, taken: set[str]) -> Machine:
        name = safe_name(node.node_name or node.node_ip, default="node")
        if name in taken:
            name = safe_name(f"{name[:54]}-{node.node_id[:8]}", default="node")
        taken.add(name)
        res: dict[str, float] = node.resources_total
        devices = [d for d in (here.devices if here else []) if d.kind is DeviceKind.cpu]
        devices += self._node_accelerators(res)
        return Machine(
            name=name,
            hostname=here.hostname if here else node.node_ip,
            os=here.os if here else "",
            arch=here.arch if here else "",
            cpu_model=here.cpu_model if here else "",
            cpus=int(res["CPU"]),
            memory_bytes=int(res.get("memory", 0)),
            devices=devices,
        )

    def _node_accelerators(self, res: dict[str, float]) -> list[Device]:
        """Ray knows how many accelerators a node has and, often, their type (the
        ``accelerator_type:X`` resource); model details beyond that are not in its view."""
        kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        model = kinds[0] if kinds else ""
        out = []
        for resource, kind in ACCELERATORS.items():
            for i in range(int(res.get(resource, 0))):
                index = len(self._accelerators)
                self._accelerators[index] = resource
                out.append(
                    Device(
                        kind=kind,
                        name=f"{kind.value}{i}",
                        index=index,
                        vendor=_vendor(resource, model),
                        model=model or f"Ray {resource}",
                    )
                )
        return out

    async def sample(self, state_dir: Path, running: int) -> TelemetrySample:
        """The cluster's own accounting: CPUs and memory that Ray has handed out, of what it
        has, other users' work included. ``load_1m`` is the CPUs in use, the closest a
        cluster has to a load average; ``running_jobs`` counts this pool's jobs."""
        usage = await self._usage()
        cpu_used, cpu_total = usage.get("CPU", (0.0, 0.0))
        mem_used, mem_total = usage.get("memory", (0.0, 0.0))
        if not cpu_total:
            cpu_total = float(sum(m.cpus for m in self._machines))
            mem_total = float(sum(m.memory_bytes for m in self._machines))
        disk = psutil.disk_usage(str(state_dir))
        return TelemetrySample(
            time=time.time(),
            cpu_percent=min(100.0, 100.0 * cpu_used / cpu_total) if cpu_total else 0.0,
            load_1m=max(0.0, cpu_used),
            memory_used_bytes=int(max(0.0, mem_used)),
            memory_total_bytes=int(mem_total),
            disk_used_bytes=disk.used,
            disk_total_bytes=disk.total,
            running_jobs=running,
            free_cpus=max(0.0, cpu_total - cpu_used),
        )

    async def unavailable(self) -> str | None:
        assert self._http is not None
        try:
            await self._http.get("/api/cluster_status", params={"format": "0"})
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
            return f"the Ray cluster at {self.url} does not answer ({type(e).__name__})"
        except httpx.HTTPError:
            return None  # slow or unwell, but there: its jobs still run
        return None

    async def _usage(self) -> dict[str, tuple[float, float]]:
        """Used and total per resource, from the dashboard's cluster status (what
        ``ray status`` shows); empty when the dashboard does not answer."""
        assert self._http is not None
        try:
            r = await self._http.get("/api/cluster_status", params={"format": "0"})
            r.raise_for_status()
            report = r.json()["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
            return {k: (float(v[0]), float(v[1])) for k, v in report.items()}
        except (httpx.HTTPError, KeyError, TypeError, ValueError, IndexError) as e:
            log.debug("no cluster status from %s: %s", self.url, e)
            return {}

    # --- running work -------------------------------------------------------------------

    async def start(self, task: Task) -> float:
        task.workdir.mkdir(parents=True, exist_ok=True)
        self._check_fits(task)
        if self._head is not None:
            _check_command(task)  # a single machine: the job's programs are the agent's
        files = not self.job_dir
        run_dir = str(task.workdir) if files else f"{self.job_dir}/{task.workdir.name}"
        entrypoint = _entrypoint(task, run_dir, files)
        gpus, resources = self._device_request(task)
        req = task.spec.resources
        sid = submission_id(task)
        try:
            await _call(
                partial(
                    self._client.submit_job,
                    entrypoint=entrypoint,
                    submission_id=sid,
                    runtime_env={"env_vars": _job_env(task, run_dir, files)},
                    metadata={
                        "cnet_job": task.job_id,
                        "cnet_attempt": str(task.attempt),
                        "cnet_tenant": task.tenant,
                    },
                    entrypoint_num_cpus=req.cpus,
                    entrypoint_num_gpus=gpus or None,
                    entrypoint_memory=req.memory or None,
                    entrypoint_resources=resources or None,
                )
            )
        except Exception as e:
            raise LaunchError(f"Ray refused the job: {_ray_message(e)}", 126) from e
        job = self._track(task, sid, entrypoint, files)
        return await job.started

    def _check_fits(self, task: Task) -> None:
        """Ray would hold a job that no single node can take as PENDING for ever; the
        node's scheduler sees only the pool's sum, so the check belongs here."""
        req = task.spec.resources
        if not self._machines or any(
            m.cpus >= req.cpus and m.memory_bytes >= req.memory for m in self._machines
        ):
            return
        most = max(self._machines, key=lambda m: (m.cpus, m.memory_bytes))
        memory = f" and {req.memory} bytes of memory" if req.memory else ""
        raise LaunchError(
            f"no Ray node has {req.cpus:g} CPUs{memory}; the largest, {most.name}, has "
            f"{most.cpus} CPUs and {most.memory_bytes} bytes",
            126,
        )

    def _device_request(self, task: Task) -> tuple[int, dict[str, float]]:
        """The scheduler's device indices say which accelerator kinds the job got; Ray then
        picks the physical devices and sets the visibility variables itself."""
        counts = Counter(self._accelerators.get(i, "GPU") for i in task.devices)
        if not counts and task.spec.resources.gpus:
            counts["GPU"] = task.spec.resources.gpus
        gpus = counts.pop("GPU", 0)
        return gpus, {k: float(v) for k, v in counts.items()}

    def _track(self, task: Task, sid: str, entrypoint: str, files: bool) -> _Job:
        job = self._jobs[task.key] = _Job(task, sid, entrypoint, files)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_loop(), name="ray-poll")
        return job

    @staticmethod
    def _begin(job: _Job, at: float) -> None:
        if not job.started.done():
            limit = job.task.spec.resources.time
            job.started_at, job.limit_at = at, (at + limit if limit else None)
            job.started.set_result(at)

    @classmethod
    def _end(cls, job: _Job) -> None:
        cls._begin(job, time.time())  # a job that ended in Ray's queue never started
        job.done.set()

    async def wait(self, task: Task) -> Outcome:
        job = self._jobs[task.key]
        await job.started
        await job.done.wait()
        self._jobs.pop(task.key, None)
        await self._collect_output(job)
        if job.files:
            self._reap_local(job)
        state, code, reason = _final(job)
        d = job.details
        start_ms = getattr(d, "start_time", None)
        end_ms = getattr(d, "end_time", None)
        ended = end_ms / 1000 if end_ms else time.time()
        wall = (end_ms - start_ms) / 1000 if start_ms and end_ms else ended - job.started_at
        usage = Usage(wall_seconds=max(0.0, wall))
        return Outcome(state, code, reason, job.started_at, max(ended, job.started_at), usage)

    async def stop(self, task: Task, state: JobState, reason: str) -> None:
        """Asks Ray to stop the job (SIGTERM to the entrypoint and its descendants, SIGKILL
        after Ray's grace); ``wait`` returns once Ray confirms, or gives up after a while."""
        job = self._jobs.get(task.key)
        if job is not None and not job.done.is_set():
            await self._request_stop(job, state, reason)

    async def _request_stop(self, job: _Job, state: JobState, reason: str) -> None:
        if job.stop_state is None:
            job.stop_state, job.stop_reason = state, reason
            job.stop_at = time.monotonic()
        try:
            await _call(partial(self._client.stop_job, job.sid))
        except Exception as e:  # already over, or the cluster is away: the poll decides
            log.info("stopping Ray job %s: %s", job.sid, _ray_message(e))

    async def recover(self, task: Task) -> bool:
        """Ray keeps the job whatever happened to the agent: a running one is followed
        again, a finished one reports its real end through ``wait``."""
        sid = submission_id(task)
        try:
            details = await _call(partial(self._client.get_job_info, sid))
        except Exception as e:
            if "does not exist" not in str(e):
                log.error("cannot ask Ray about %s: %s", sid, _ray_message(e))
            return False
        files = f">>{shlex.quote(str(task.stdout))}" in details.entrypoint
        job = self._track(task, sid, details.entrypoint, files)
        job.details = details
        if details.status.value != "PENDING":
            start_ms = details.start_time
            self._begin(job, _started_stamp(job) or (start_ms / 1000 if start_ms else time.time()))
        return True

    # --- following jobs -----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """One status call per round for all tracked jobs, however many there are."""
        while self._jobs:
            try:
                await self._poll_once()
            except Exception:
                log.exception("polling the Ray cluster failed")
            await asyncio.sleep(POLL)

    async def _poll_once(self) -> None:
        try:
            listed = await _call(self._client.list_jobs)
        except Exception as e:
            self._cluster_away(e)
            return
        self._unreachable_since = None
        by_sid = {d.submission_id: d for d in listed if d.submission_id}
        for job in list(self._jobs.values()):
            if not job.done.is_set():
                await self._update(job, by_sid.get(job.sid))

    async def _update(self, job: _Job, details: Any) -> None:
        if details is None:
            job.missing += 1
            if job.missing >= MISSING_ROUNDS:
                self._end(job)  # deleted behind the agent's back: reported as lost
            return
        job.missing, job.details = 0, details
        if details.status.value != "PENDING":
            self._begin(job, _started_stamp(job) or time.time())
        if details.status.is_terminal():
            self._end(job)
            return
        if not job.files:
            await self._copy_ray_log(job, final=False)
        now = time.time()
        if job.limit_at is not None and now >= job.limit_at and job.stop_state is None:
            limit = job.task.spec.resources.time or 0
            await self._request_stop(
                job, JobState.FAILED, f"time limit of {format_seconds(limit)} exceeded"
            )
        elif job.stop_at is not None and time.monotonic() - job.stop_at > STOP_TIMEOUT:
            log.warning("Ray has not stopped %s after %gs; giving up", job.sid, STOP_TIMEOUT)
            self._end(job)

    def _cluster_away(self, e: Exception) -> None:
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
            log.warning("the Ray cluster at %s does not answer: %s", self.url, _ray_message(e))
        elif now - self._unreachable_since > LOST_AFTER:
            for job in self._jobs.values():
                self._end(job)

    # --- output -------------------------------------------------------------------------

    async def _collect_output(self, job: _Job) -> None:
        """Through Ray's logs: whatever is not yet in the file. With files: what the shell
        said before the redirection took effect (a missing directory, say), into stderr."""
        if not job.files:
            await self._copy_ray_log(job, final=True)
            return
        if job.details is None or job.details.status.value == "SUCCEEDED":
            return
        text = await self._ray_log(job)
        if text:
            with open(job.task.stderr, "ab") as f:
                f.write(text.encode())

    async def _copy_ray_log(self, job: _Job, final: bool) -> None:
        """The file holds a prefix of the job's output, so its size says where to go on;
        that holds across agent restarts too. Until the end, only whole lines are copied,
        so that a character is never cut in two."""
        text = await self._ray_log(job)
        if text is None:
            return
        data = text.encode()
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        path = job.task.stdout
        have = path.stat().st_size if path.exists() else 0
        if len(data) > have:
            with open(path, "ab") as f:
                f.write(data[have:])

    async def _ray_log(self, job: _Job) -> str | None:
        try:
            raw = await _call(partial(self._client.get_job_logs, job.sid))
        except Exception as e:
            log.debug("no logs for %s: %s", job.sid, _ray_message(e))
            return None
        return job_output(str(raw), job.sid, job.entrypoint)

    def _reap_local(self, job: _Job) -> None:
        """Processes a job left in the background outlive it under Ray; on this machine
        they are found by the session the entrypoint ran in, as the local backend does."""
        node = getattr(job.details, "driver_node_id", None)
        if self._head is None and node not in self._local_nodes:
            return  # the pid is another machine's
        try:
            sid = int((job.task.workdir / PGID_FILE).read_text())
        except (OSError, ValueError):
            return
        _kill_session(sid)


# --- the local head -------------------------------------------------------------------


class _LocalHead:
    """A single-machine Ray head of the agent's own: every port on 127.0.0.1, state under
    the agent's state directory. It runs in a session of its own, so that it outlives an
    agent killed outright and the next agent adopts it with the jobs it runs; a clean stop
    of the agent stops it, and only it, by process and session rather than ``ray stop``."""

    def __init__(self, root: Path, num_cpus: int | None) -> None:
        self.root = root
        self.num_cpus = num_cpus
        self.record = root / "head.json"
        self.pid = 0
        self.create_time = 0.0
        self.url = ""
        self.temp_dir = ""
        self._popen: subprocess.Popen[bytes] | None = None

    async def open(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if not await self._adopt():
            await self._launch()
        return self.url

    async def _adopt(self) -> bool:
        try:
            rec = json.loads(self.record.read_text())
            self.pid, self.create_time = int(rec["pid"]), float(rec["create_time"])
            self.url, self.temp_dir = str(rec["url"]), str(rec["temp_dir"])
        except (OSError, ValueError, KeyError):
            return False
        if _same_process(self.pid, self.create_time) is None:
            return False
        if await _wait_ready(self.url, 30, lambda: True):
            log.info("adopted the local Ray head at %s (pid %d)", self.url, self.pid)
            return True
        log.warning("the local Ray head (pid %d) does not answer; replacing it", self.pid)
        await self.close()
        return False

    async def _launch(self) -> None:
        self.temp_dir = _short_dir(self.root / "tmp")
        ports = _free_ports(11)
        self.url = f"http://127.0.0.1:{ports[0]}"
        args = [
            *_ray_cli(),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.num_cpus or _usable_cpus()}",
            f"--dashboard-port={ports[0]}",
            f"--port={ports[1]}",
            f"--node-manager-port={ports[2]}",
            f"--object-manager-port={ports[3]}",
            f"--dashboard-agent-listen-port={ports[4]}",
            f"--dashboard-agent-grpc-port={ports[5]}",
            f"--runtime-env-agent-port={ports[6]}",
            f"--metrics-export-port={ports[7]}",
            f"--ray-client-server-port={ports[8]}",
        ]
        env = _head_env(dashboard_metrics=ports[9], autoscaler_metrics=ports[10])
        with open(self.root / "head.log", "ab") as out:
            self._popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )
        self.pid = self._popen.pid
        self.create_time = psutil.Process(self.pid).create_time()
        self.record.write_text(
            json.dumps(
                {
                    "pid": self.pid,
                    "create_time": self.create_time,
                    "url": self.url,
                    "temp_dir": self.temp_dir,
                }
            )
        )
        log.info("starting a local Ray head at %s (pid %d)", self.url, self.pid)
        popen = self._popen
        if not await _wait_ready(self.url, READY_TIMEOUT, lambda: popen.poll() is None):
            await self.close()
            tail = (self.root / "head.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the local Ray head did not start:\n{tail}")

    async def close(self) -> None:
        """SIGTERM lets ``ray start --block`` take its processes down in order; whatever
        is left after the grace (workers, drivers) is found by session and killed."""
        proc = _same_process(self.pid, self.create_time)
        if proc is not None:
            members = _session_members(self.pid) + _descendants(proc)
            with contextlib.suppress(psutil.Error):
                proc.terminate()
            deadline = time.monotonic() + HEAD_GRACE
            while time.monotonic() < deadline and _alive(proc, self._popen):
                await asyncio.sleep(0.2)
            for p in [*members, *_session_members(self.pid), proc]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            if self._popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self._popen.wait, 5)
            log.info("stopped the local Ray head (pid %d)", self.pid)
        self.record.unlink(missing_ok=True)
        link = Path(self.temp_dir) if self.temp_dir else None
        if link is not None and link.is_symlink():
            link.unlink()


# --- helpers ----------------------------------------------------------------------------


def submission_id(task: Task) -> str:
    """Stable for an attempt, so that a restarted agent can ask Ray about it."""
    return f"cnet-{task.job_id}-{task.attempt}"


def job_output(log_text: str, sid: str, entrypoint: str) -> str | None:
    """The job's own output in Ray's log for it, or None while the entrypoint has not
    started. Ray writes runtime-env lines first and then announces the entrypoint; the
    announcement is written after the process starts, so early output may precede it."""
    marker = f"Running entrypoint for job {sid}: {entrypoint}\n"
    at = log_text.find(marker)
    if at < 0:
        return None
    before = log_text[:at].splitlines(keepends=True)
    return "".join(x for x in before if not _RAY_LOG_LINE.match(x)) + log_text[at + len(marker) :]


def _entrypoint(task: Task, run_dir: str, files: bool) -> str:
    """A shell line: Ray runs entrypoints with ``sh -c``. ``exec`` keeps the job's process
    the one Ray watches, signals and takes the exit status of."""
    command = shlex.join(task.spec.command)
    where = shlex.quote(run_dir)
    if not files:
        return f"mkdir -p {where}/tmp && cd {where} && exec {command}"
    out, err = shlex.quote(str(task.stdout)), shlex.quote(str(task.stderr))
    pgid = shlex.quote(str(task.workdir / PGID_FILE))
    return f"cd {where} && echo $$ >{pgid} && exec {command} >>{out} 2>>{err}"


def _job_env(task: Task, run_dir: str, files: bool) -> dict[str, str]:
    """The agent's job environment, less what Ray decides itself; on nodes that do not
    share the agent's files, less the agent's own paths too."""
    env = {k: v for k, v in task.env.items() if k not in DEVICE_VARS}
    if not task.devices:  # none to pick: the job knows it has none, as on every backend
        env["CNET_DEVICES"] = "[]"
    if not files:
        for k in ("PATH", "USER", "LOGNAME", "SHELL"):
            env.pop(k, None)
        env.update(HOME=run_dir, TMPDIR=f"{run_dir}/tmp")
    return env


def _check_command(task: Task) -> None:
    program = task.spec.command[0]
    if "/" in program:
        found: str | None = os.path.join(task.workdir, program)  # the job starts there
    else:
        found = shutil.which(program, path=task.env.get("PATH", os.defpath))
    if found is None or not os.path.exists(found):
        raise LaunchError(f"command not found: {program}", 127)
    if not os.access(found, os.X_OK) or os.path.isdir(found):
        raise LaunchError(f"permission denied: {program}", 126)


def _started_stamp(job: _Job) -> float | None:
    """When the entrypoint began: it writes its process group first thing. Ray's own
    ``start_time`` is the submission, which includes the wait in Ray's queue."""
    if not job.files:
        return None
    try:
        return os.stat(job.task.workdir / PGID_FILE).st_mtime
    except OSError:
        return None


def _final(job: _Job) -> tuple[JobState, int | None, str]:
    d = job.details
    code = getattr(d, "driver_exit_code", None)
    exit_code = None if code is None else (code if code >= 0 else 128 - code)
    if job.stop_state is not None:
        return job.stop_state, exit_code, job.stop_reason
    if d is None or job.missing >= MISSING_ROUNDS:
        return JobState.FAILED, None, f"Ray lost job {job.sid}"
    status = d.status.value
    if status == "SUCCEEDED":
        return JobState.COMPLETE, 0 if code is None else exit_code, ""
    if status == "STOPPED":
        return JobState.CANCELED, exit_code, "stopped in Ray"
    if not d.status.is_terminal():
        return JobState.FAILED, None, "lost contact with the Ray cluster"
    if code is None:
        return JobState.FAILED, None, _first_line(d.message) or "Ray failed the job"
    if code < 0:
        return JobState.FAILED, exit_code, f"killed by {_signal_name(-code)}"
    return JobState.FAILED, exit_code, f"exit code {code}"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0][:500]


def _ray_message(e: BaseException) -> str:
    """Ray's errors carry whole server tracebacks; the last ``XError: ...`` line is the
    part a user can act on."""
    text = str(e).strip() or type(e).__name__
    found = re.findall(r"^\w*(?:Error|Exception): (.+)$", text, re.M)
    return (found[-1] if found else text.split("\n", 1)[0]).rstrip(" .")[:500]


def _vendor(resource: str, model: str) -> str:
    low = model.lower()
    if resource == "NPU" or low.startswith("ascend"):
        return "huawei"
    for vendor in ("amd", "intel"):
        if low.startswith(vendor):
            return vendor
    return "nvidia" if model else "unknown"


def _dashboard_url(address: str) -> str:
    """The dashboard is what the agent talks to; a bare HOST:PORT means it, over HTTP."""
    return address if "://" in address else f"http://{address}"


def _forget_ray_address_env() -> None:
    """Ray's clients let these variables override the address they are given; the agent's
    own option has to win, and a local head must not inherit them either."""
    for var in RAY_ADDRESS_VARS:
        if os.environ.pop(var, None) is not None:
            log.info("ignoring %s: the Ray backend's address option decides", var)


async def _call(fn: Callable[[], T]) -> T:
    return await asyncio.wait_for(asyncio.to_thread(fn), CALL_TIMEOUT)


def _local_addresses() -> set[str]:
    out = {"127.0.0.1", "::1", "localhost"}
    with contextlib.suppress(OSError):
        for addrs in psutil.net_if_addrs().values():
            out.update(a.address for a in addrs)
    return out


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return psutil.cpu_count() or 1


def _ray_cli() -> list[str]:
    """The same Ray as the agent's client library, whatever is on PATH."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _head_env(dashboard_metrics: int, autoscaler_metrics: int) -> dict[str, str]:
    """Ray's processes pass their environment on to every job: the agent's secrets stay
    out. Single-node mode makes Ray advertise and bind 127.0.0.1 instead of the LAN
    address; the metrics servers would otherwise take fixed ports shared by every head."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CNET_") and k not in RAY_ADDRESS_VARS
    }
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        # Bound to 127.0.0.1 and the agent's alone; a token file another Ray left in the
        # home directory must not switch its dashboard to token authentication.
        RAY_AUTH_MODE="disabled",
        DASHBOARD_METRIC_PORT=str(dashboard_metrics),
        AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
    )
    return env


def _free_ports(n: int) -> list[int]:
    """Held open together, so that no two of them are the same port."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _short_dir(path: Path) -> str:
    """Ray puts Unix sockets under its temp dir, and a socket path may not exceed 107
    bytes; a deep state directory is reached through a short link in /tmp instead."""
    path.mkdir(parents=True, exist_ok=True)
    if len(str(path)) <= 40:
        return str(path)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    base = tempfile.gettempdir() if len(tempfile.gettempdir()) <= 16 else "/tmp"
    link = Path(base) / f"cnet-ray-{digest}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path, target_is_directory=True)
    return str(link)


async def _wait_ready(url: str, timeout: float, alive: Callable[[], bool]) -> bool:
    """Ready means the dashboard answers and lists a live node: before that, a submitted
    job has no agent to run it."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline and alive():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                if (await http.get("/api/version")).status_code == 200:
                    r = await http.get("/api/v0/nodes", params={"limit": "10"})
                    nodes = r.json()["data"]["result"]["result"]
                    if any(n.get("state") == "ALIVE" for n in nodes):
                        return True
            await asyncio.sleep(0.5)
    return False


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process, unless the pid now belongs to someone else."""
    if pid <= 0:
        return None
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) < 1 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def _alive(proc: psutil.Process, popen: subprocess.Popen[bytes] | None) -> bool:
    if popen is not None and popen.poll() is not None:
        return False
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


def _session_members(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                out.append(p)
    return out


def _kill_session(sid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)
    for p in _session_members(sid):
        with contextlib.suppress(psutil.Error):
            p.kill()


def _auth_header() -> dict[str, str]:
    """A cluster with Ray's token authentication (``RAY_AUTH_MODE=token``) wants its token
    on dashboard calls too: from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``, as Ray's own clients look for it."""
    if os.environ.get("RAY_AUTH_MODE", "") == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        with contextlib.suppress(OSError):
            token = Path(path).read_text().strip()
    return {"authorization": f"Bearer {token}"} if token else {}
