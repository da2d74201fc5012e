"""The agent: one per pool. Registers, heartbeats, takes assignments, runs them, reports.

Nothing a job reports is lost while the node is away: results are written to the task's
working directory first and sent when the node answers again, including after an agent
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from computenet import __version__, config
from computenet.agent import calibrate as calibration
from computenet.agent import workdir as job_files
from computenet.agent.backends import Backend, LaunchError, Outcome, Task, runas
from computenet.agent.backends import create as create_backend
from computenet.agent.environment import job_env, pick_variant
from computenet.agent.identity import Identity
from computenet.agent.link import BeatRefused, NodeLink
from computenet.agent.logs import Tail
from computenet.agent.probe import safe_name
from computenet.agent.staging import Stager, StagingError
from computenet.functions.wire import pool_runtime
from computenet.model import (
    Assignment,
    AttemptRef,
    Capacity,
    Device,
    Directives,
    Heartbeat,
    HeartbeatAck,
    JobState,
    LogChunk,
    Machine,
    PoolInventory,
    Price,
    ProviderRegistration,
    Report,
    ReportBatch,
    Usage,
)
from computenet.model.common import as_text
from computenet.sdk.client import ApiError
from computenet.transfer.server import DataServer

log = logging.getLogger("computenet.agent")
LOG_INTERVAL = 0.5
COALESCE = 0.02
MAX_BATCH = 2000
MAX_BATCH_LOG_CHARS = 2 * 1024 * 1024


@dataclass
class AgentConfig:
    node_url: str
    token: str | None
    state_dir: Path
    provider: str = "local"
    pool: str = ""
    region: str = ""
    backend: str = "local"
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_interval: float = 5.0
    capacity: Capacity | None = None
    options: dict[str, str] = field(default_factory=dict)
    machines: list[Machine] | None = None  # declared instead of asked of the backend
    keep_days: float = 7.0
    provider_key: Path | None = None
    price: Price | None = None
    carbon_intensity: float | None = None
    calibrate: bool = True
    calibrate_seconds: float = 2.0
    data_root: Path | None = None  # default: <state_dir>/data
    data_host: str = "127.0.0.1"
    data_port: int = 0  # 0: any free port, advertised at registration
    data_tls: bool = False  # advise clients to use TLS (they may anyway)
    data_quota: int | None = None  # bytes the data root may hold; None: no cap
    part_days: float = 7.0  # unfinished copies' partial files are removed after this
    fetch_rate: int | None = None  # bytes a second staging may fetch at; None: no cap


class Backoff:
    def __init__(self, first: float = 0.2, most: float = 10.0) -> None:
        self.first, self.most, self.current = first, most, first

    def reset(self) -> None:
        self.current = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.current * (0.5 + random.random()))
        self.current = min(self.most, self.current * 2)


@dataclass
class _Running:
    task: Task
    tails: tuple[Tail, Tail]
    future: asyncio.Task[None] | None = None
    staging: asyncio.Task[None] | None = None
    halted: StagingError | None = None  # why its staging was cut short


# How long a registration refused because another agent's key holds the pool is tried
# again: past the node's suspect time (15 s by default), after which a lost agent's pool
# may be taken over.
TAKEOVER_WAIT = float(os.environ.get("CNET_TAKEOVER_WAIT", "45"))


def _held_by_another(e: ApiError) -> bool:
    errors = e.problem.errors
    return e.status == 409 and bool(errors) and errors[0].field == "inventory.name"


class Agent:
    def __init__(self, cfg: AgentConfig, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.identity = Identity.load(
            cfg.state_dir / "identity",
            cfg.provider_key or config.data_dir() / "providers" / f"{cfg.provider}.key",
        )
        self.jobs_dir = cfg.state_dir / "jobs"
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.jobs_dir.mkdir(exist_ok=True)
        self.backend = backend or create_backend(cfg.backend, cfg.options)
        self.link = NodeLink(cfg.node_url, cfg.token, self.identity)
        self.machines: list[Machine] = []
        self.devices: list[Device] = []  # as registered: each with its CPI
        self.pool_name = safe_name(cfg.pool or socket.gethostname())
        self.running: dict[str, _Running] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # attempts taken, newest last
        self._logs: list[LogChunk] = []
        self._reports: list[tuple[Report, Path | None]] = []
        # One batch in flight at a time: a second sender would resend what is not yet
        # acknowledged.
        self._sending = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._registered = asyncio.Event()
        self._need_register = asyncio.Event()
        self._need_register.set()
        self._seq = 0
        self.pool_cpi = ""
        self.fatal: Exception | None = None
        self._down: str | None = None  # why the backend's engine takes no work, while so
        self._misses = 0  # checks of the engine in a row that it failed
        data_root = (cfg.data_root or cfg.state_dir / "data").resolve()
        self.data = DataServer(
            data_root,
            lambda: self.pool_cpi,
            self.link.transfer_key,
            cfg.data_host,
            cfg.data_port,
            cfg.data_tls,
            tls_dir=cfg.state_dir,
            quota=cfg.data_quota,
            part_days=cfg.part_days,
            copies=self.link.copies,
        )
        self.stager = Stager(
            self.link, data_root, self.data.home_quota, self.data.quota, cfg.fetch_rate
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        key = self.cfg.provider_key
        runas.close_up((self.cfg.state_dir, self.data.root))
        private = (self.cfg.state_dir, self.data.root, *config.own_dirs())
        await self.backend.open(self.cfg.state_dir, private + ((key,) if key else ()))
        try:
            self.machines = self.cfg.machines or await self.backend.inventory(self.cfg.state_dir)
            if self.cfg.calibrate and not self.cfg.machines and self.backend.name == "local":
                self.machines = [await self._calibrated(m) for m in self.machines]
            await self._recover()
            await self.data.start()
        except BaseException:
            await self.backend.close()  # an engine it started (a Ray head) must not linger
            raise
        loops = [
            asyncio.create_task(self._register_loop(stop), name="register"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._directives_loop(), name="directives"),
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._log_loop(), name="logs"),
            asyncio.create_task(self._retention_loop(), name="retention"),
        ]
        await stop.wait()
        await self._shutdown(loops)
        if self.fatal is not None:
            raise self.fatal

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        """Stops running work (no orphans), then tries briefly to tell the node.

        Work that lives in an engine of its own (a Slurm job) is left to run: the next agent
        adopts it, and the node hears of its end then.
        """
        if self.backend.survives_agent:
            following = [r.future for r in self.running.values() if r.future is not None]
            for f in following:
                f.cancel()
            await asyncio.gather(*following, return_exceptions=True)
        for r in list(self.running.values()):
            await self._stop(r, JobState.FAILED, "the agent was stopped")
        pending = [r.future for r in self.running.values() if r.future is not None]
        if pending:
            await asyncio.wait(pending, timeout=10)
        if self._registered.is_set() and (self._reports or self._logs):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush_once(), 3)
        if self._registered.is_set():
            with contextlib.suppress(Exception):
                await self.link.leave()
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.data.close()
        await self.link.close()
        await self.backend.close()

    async def _calibrated(self, machine: Machine, refresh: bool = False) -> Machine:
        """Only a pool that is this machine is measured here; a cluster's nodes are not."""
        cpus = int(self.cfg.capacity.cpus) if self.cfg.capacity else machine.cpus
        cal = await asyncio.to_thread(
            calibration.cached,
            config.data_dir() / "calibration",
            max(1, cpus),
            machine.name,
            self.cfg.calibrate_seconds,
            refresh=refresh,
        )
        log.info("calibrated %s: %.3g SCU", machine.name, cal.scu)
        return machine.model_copy(update={"calibration": cal})

    def inventory(self) -> PoolInventory:
        return PoolInventory(
            provider=self.cfg.provider,
            name=self.pool_name,
            public_key=self.identity.pool_key.public_key,
            backend=self.backend.name,
            region=self.cfg.region,
            labels=self.cfg.labels,
            machines=self.machines,
            capacity=self.cfg.capacity,
            queue_factor=self.backend.queue_factor,
            price=self.cfg.price,
            carbon_intensity=self.cfg.carbon_intensity,
            agent_version=__version__,
            runtime=pool_runtime(),
            cpi=self._known_cpi(),
            data=self.data.endpoint if self.data.port else None,
        )

    def _known_cpi(self) -> str | None:
        """The CPI this pool got from this node before, if it did."""
        saved = self.identity.saved()
        return saved.get("pool_cpi") if saved.get("node_url") == self.cfg.node_url else None

    async def _register_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.2, 5.0)
        takeover_until = time.monotonic() + TAKEOVER_WAIT
        while True:
            await self._need_register.wait()
            try:
                pool = await self.link.register(
                    ProviderRegistration(
                        name=self.cfg.provider, public_key=self.identity.provider_key.public_key
                    ),
                    self.inventory(),
                )
            except httpx.TransportError as e:
                log.info("node %s not reachable (%s); retrying", self.cfg.node_url, e)
                await backoff.sleep()
                continue
            except ApiError as e:
                if _held_by_another(e) and time.monotonic() < takeover_until:
                    # A restart that lost its state: the old agent's pool is still heard
                    # of until it turns suspect. A second agent beside a live one gives up.
                    log.warning("registration refused: %s; trying again", e)
                    await asyncio.sleep(2.0)
                    continue
                log.error("registration refused: %s", e)
                if e.status in (401, 403, 409, 422):
                    self.fatal = e  # retrying cannot help: wrong token, key or inventory
                    stop.set()
                    return
                await backoff.sleep()
                continue
            self.pool_cpi = pool.cpi
            self.devices = [d for m in pool.machines for d in m.devices]  # with their CPIs
            self.identity.save(pool_cpi=pool.cpi, node_url=self.cfg.node_url)
            log.info("registered pool %s", pool.cpi)
            if self._down is not None:  # registering made it online: its engine is not
                with contextlib.suppress(httpx.HTTPError, ApiError):
                    await self.link.leave()
            self._need_register.clear()
            self._registered.set()
            backoff.reset()

    # --- heartbeats ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Heartbeats go over a WebSocket while it stays up, else one POST each."""
        await self._registered.wait()
        await self.backend.sample(self.cfg.state_dir, 0)  # primes CPU counters
        while True:
            try:
                async with self.link.beats() as channel:
                    while True:
                        if not await self._engine_down():
                            self._fence_all(await channel.send(await self._beat()))
                        await asyncio.sleep(self.cfg.heartbeat_interval)
            except BeatRefused as e:
                log.warning("heartbeat refused: %s", e)
            except (OSError, TimeoutError, websockets.WebSocketException) as e:
                log.debug("heartbeat channel down (%s); posting instead", e)
            try:
                if not await self._engine_down():
                    self._fence_all(await self.link.heartbeat(await self._beat()))
            except (httpx.TransportError, ApiError) as e:
                log.debug("heartbeat failed: %s", e)
            await asyncio.sleep(self.cfg.heartbeat_interval)

    async def _engine_down(self) -> bool:
        """Whether an idle pool's engine can take no work now (two checks running). Then
        the pool leaves (suspect at once: nothing more is placed on it) and heartbeats
        stop until the engine answers; the first heartbeat after brings the pool back.
        While work runs, heartbeats go on as before: work on a cluster outlives an outage
        of its control plane, and a pool that fell silent would have it requeued."""
        if self.running:
            self._misses = 0
            return False
        try:
            why = await self.backend.unavailable()
        except Exception as e:  # a check that fails says as much as one that answers no
            why = f"the backend's engine cannot be asked ({e})"
        if why is None:
            self._misses = 0
            if self._down is not None:
                log.warning("%s answers again: the pool takes work again", self.backend.name)
                self._down = None
            return False
        self._misses += 1
        if self._misses < 2:  # one slow answer is no outage
            return False
        if self._down is None:
            log.warning("%s; the pool takes no work until it answers", why)
            with contextlib.suppress(httpx.HTTPError, ApiError):
                await self.link.leave()
        self._down = why
        return True

    async def _beat(self) -> Heartbeat:
        self._seq = max(self._seq + 1, time.time_ns() // 1_000_000)
        return Heartbeat(
            seq=self._seq,
            sent_at=time.time(),
            sample=await self.backend.sample(self.cfg.state_dir, len(self.running)),
            running=list(self.running),
        )

    def _fence_all(self, ack: HeartbeatAck) -> None:
        for ref in ack.stop:
            self._fence(ref)

    # --- directives ---------------------------------------------------------------------

    async def _directives_loop(self) -> None:
        await self._registered.wait()
        backoff = Backoff()
        resync = True
        while True:
            try:
                d = await self.link.directives(wait=25, resync=resync)
            except (httpx.TransportError, ApiError) as e:
                log.warning("directives: %s; trying again", e)
                resync = True
                if isinstance(e, ApiError) and e.status == 401:
                    self._registered.clear()  # the node forgot this pool: register again
                    self._need_register.set()
                    await self._registered.wait()
                await backoff.sleep()
                continue
            if resync:
                self._dirty.set()  # send what piled up while the node was away
            resync = False
            backoff.reset()
            self.handle(d)

    def handle(self, d: Directives) -> None:
        for a in d.assign:
            key = f"{a.job_id}#{a.attempt}"
            if key in self._seen:
                continue
            self._remember(key)
            self._start(a)
        for ref in d.cancel:
            self._cancel(ref)
        if d.calibrate:
            self._in_background(self._recalibrate())

    async def _recalibrate(self) -> None:
        """Asked by the node (``cnet pool calibrate``): measure afresh, register again."""
        if self.cfg.machines or self.backend.name != "local":
            log.warning("calibration asked, but this pool's machines are declared, not measured")
            return
        try:
            self.machines = [await self._calibrated(m, refresh=True) for m in self.machines]
        except Exception:
            log.exception("calibration failed")
            return
        self._need_register.set()

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        while len(self._seen) > 100_000:
            self._seen.popitem(last=False)

    def _start(self, a: Assignment) -> None:
        workdir = self.jobs_dir / f"{a.job_id}.{a.attempt}"
        task = Task(a.job_id, a.attempt, a.tenant, a.spec, a.devices, workdir)
        self._follow(task, self._run)

    def _follow(self, task: Task, how: Callable[[_Running], Coroutine[Any, Any, None]]) -> None:
        run = _Running(task, (Tail(task.stdout), Tail(task.stderr)))
        self.running[task.key] = run
        run.future = asyncio.create_task(how(run), name=task.key)

    def _cancel(self, ref: AttemptRef) -> None:
        key = f"{ref.job_id}#{ref.attempt}"
        run = self.running.get(key)
        if run is not None:
            self._in_background(self._stop(run, JobState.CANCELED, "canceled by the user"))
        elif key not in self._seen:
            # Canceled before it reached us: confirm, so the node frees its resources.
            self._remember(key)
            now = time.time()
            self._queue(
                Report(
                    job_id=ref.job_id,
                    attempt=ref.attempt,
                    state=JobState.CANCELED,
                    at=now,
                    reason="canceled before it started",
                ),
                None,
            )

    def _fence(self, ref: AttemptRef) -> None:
        """The node gave this attempt to another pool while we were out of touch: stop it."""
        run = self.running.get(f"{ref.job_id}#{ref.attempt}")
        if run is None:
            return
        log.warning("stopping %s: the node requeued it elsewhere", run.task.key)
        self._in_background(
            self._stop(run, JobState.FAILED, "fenced: the job was requeued elsewhere")
        )

    async def _stop(self, run: _Running, state: JobState, reason: str) -> None:
        """A job still staging has no process yet: its staging is cut short instead."""
        if run.staging is not None and not run.staging.done():
            run.halted = StagingError(reason, state)
            run.staging.cancel()
            return
        await self.backend.stop(run.task, state, reason)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, run: _Running) -> None:
        task = run.task
        try:
            task.workdir.mkdir(parents=True, exist_ok=True)
            # Written before launch, so that a restarted agent knows what it was running.
            job_files.write(task.workdir / "assignment.json", _assignment(task).model_dump_json())
            given = [d for d in self.devices if d.index in task.devices]
            variants = {str(k): v for k, v in task.spec.variants.items()}
            rt, command = pick_variant(variants, task.spec.command, given, self.devices)
            if command != task.spec.command:
                task.spec = task.spec.model_copy(update={"command": command})
            task.env = job_env(task, self.pool_cpi, self.devices)
            # Function workers call home with the agent's own Python (see computenet.functions).
            task.env.setdefault("CNET_PYTHON", sys.executable)
            task.env.setdefault("CNET_NODE_URL", self.cfg.node_url)
            if rt:
                task.env["CNET_RUNTIME"] = rt
            try:
                await self._stage_in(run)
                started = await self.backend.start(task)
            except (LaunchError, StagingError) as e:
                now = time.time()
                state, code, why = (
                    (JobState.FAILED, e.exit_code, e.reason)
                    if isinstance(e, LaunchError)
                    else (e.state, None, str(e))
                )
                outcome = Outcome(state, code, why, now, now, Usage(wall_seconds=0))
            else:
                self._queue(
                    Report(
                        job_id=task.job_id, attempt=task.attempt, state=JobState.RUNNING, at=started
                    ),
                    None,
                )
                outcome = await self.backend.wait(task)
                await self._stage_out(task, outcome)
            self._ship(run, final=True)
            self._finish(task, outcome)
        except Exception as e:
            log.exception("task %s failed inside the agent", task.key)
            now = time.time()
            self._finish(
                task,
                Outcome(
                    JobState.FAILED, None, f"agent error: {e}", now, now, Usage(wall_seconds=0)
                ),
            )
        finally:
            self.running.pop(task.key, None)

    async def _stage_out(self, task: Task, outcome: Outcome) -> None:
        """A finished job's outputs, uploaded before its end is reported: a job is COMPLETE
        only once its outputs are where it said they go."""
        if outcome.state is JobState.COMPLETE and task.spec.outputs:
            try:
                await self.stager.outputs(task)
            except StagingError as e:
                outcome.state, outcome.reason = JobState.FAILED, str(e)

    async def _stage_in(self, run: _Running) -> None:
        task = run.task
        if not task.spec.inputs:
            return
        state = Report(
            job_id=task.job_id, attempt=task.attempt, state=JobState.STAGING, at=time.time()
        )
        self._queue(state, None)
        run.staging = asyncio.create_task(self.stager.inputs(task))
        try:
            await run.staging
        except asyncio.CancelledError:
            if run.halted is None:
                raise
            raise run.halted from None

    def _finish(self, task: Task, outcome: Outcome) -> None:
        report = Report(
            job_id=task.job_id,
            attempt=task.attempt,
            state=outcome.state,
            at=outcome.ended_at,
            exit_code=outcome.exit_code,
            reason=as_text(outcome.reason)[:4096],  # an error may name a file in any bytes
            usage=outcome.usage,
        )
        # On disk first: if the node is away, or this agent restarts, the result survives.
        job_files.write(task.workdir / "result.json", report.model_dump_json())
        self._queue(report, task.workdir)

    # --- logs and reports ---------------------------------------------------------------

    def _ship(self, run: _Running, final: bool = False) -> None:
        for tail, stream in zip(run.tails, ("stdout", "stderr"), strict=True):
            for offset, text in tail.read(final):
                self._logs.append(
                    LogChunk(
                        job_id=run.task.job_id,
                        attempt=run.task.attempt,
                        stream=stream,
                        offset=offset,
                        data=text,
                    )
                )
                self._dirty.set()

    async def _log_loop(self) -> None:
        while True:
            await asyncio.sleep(LOG_INTERVAL)
            for run in list(self.running.values()):
                self._ship(run)

    def _queue(self, report: Report, workdir: Path | None) -> None:
        self._reports.append((report, workdir))
        self._dirty.set()
        if report.state.terminal:
            self._urgent.set()

    async def _flush_loop(self) -> None:
        await self._registered.wait()
        backoff = Backoff()
        while True:
            await self._dirty.wait()
            if not self._urgent.is_set():
                # A start or some output can wait a moment for company; an end frees
                # resources on the node and goes at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), COALESCE)
            self._dirty.clear()
            self._urgent.clear()
            while self._reports or self._logs:
                try:
                    await self._flush_once()
                    backoff.reset()
                except (httpx.TransportError, ApiError) as e:
                    log.debug("report failed, will retry: %s", e)
                    await backoff.sleep()

    async def _flush_once(self) -> None:
        async with self._sending:
            await self._send_batch()

    async def _send_batch(self) -> None:
        logs: list[LogChunk] = []
        size = 0
        for chunk in self._logs:
            if len(logs) >= MAX_BATCH or size + len(chunk.data) > MAX_BATCH_LOG_CHARS:
                break
            logs.append(chunk)
            size += len(chunk.data)
        reports = self._reports[:MAX_BATCH] if len(logs) == len(self._logs) else []
        try:
            result = await self.link.report(ReportBatch(logs=logs, reports=[r for r, _ in reports]))
        except ApiError as e:
            if e.status != 422:
                raise
            # Sent again it would be refused again, and hold back all that follows it: the
            # output goes first, then (sent alone next time) the reports.
            if logs:
                log.error("the node refused %d chunks of output, dropped: %s", len(logs), e)
                del self._logs[: len(logs)]
            else:
                log.error("the node refused %d reports, dropped: %s", len(reports), e)
                del self._reports[: len(reports)]
            return
        del self._logs[: len(logs)]
        del self._reports[: len(reports)]
        for why in result.refused:
            log.warning("node refused a report: %s", why)
        for report, where in reports:
            if where is not None and report.state.terminal:
                job_files.write(where / "reported")
        self.handle(result.directives)

    async def _retention_loop(self) -> None:
        """Working directories of reported attempts are kept for ``keep_days``, then removed."""
        while True:
            cutoff = time.time() - self.cfg.keep_days * 86400
            for marker in self.jobs_dir.glob("*/reported"):
                try:
                    if marker.stat().st_mtime < cutoff:
                        shutil.rmtree(marker.parent, ignore_errors=True)
                except OSError:
                    continue
            await asyncio.sleep(3600)

    async def _recover(self) -> None:
        """Re-queues results the node never acknowledged; re-attaches to work still running
        where the backend can follow it, and reports the rest as lost."""
        for where in sorted(self.jobs_dir.iterdir()):
            if not where.is_dir() or (where / "reported").exists():
                continue
            result = where / "result.json"
            if result.exists():
                try:
                    report = Report.model_validate_json(job_files.read(result))
                except (OSError, ValueError):
                    continue
                if job_files.belongs(where, report.job_id, report.attempt):
                    self._remember(f"{report.job_id}#{report.attempt}")
                    self._reports.append((report, where))
                continue
            try:
                a = Assignment.model_validate_json(job_files.read(where / "assignment.json"))
            except (OSError, ValueError):
                continue
            if not job_files.belongs(where, a.job_id, a.attempt):
                continue
            task = Task(a.job_id, a.attempt, a.tenant, a.spec, a.devices, where)
            self._remember(task.key)
            if await self.backend.recover(task):
                log.info("re-attached to %s", task.key)
                self._follow(task, self._resume)
                continue
            now = time.time()
            self._finish(
                task,
                Outcome(
                    JobState.FAILED,
                    None,
                    "the agent restarted while the job ran; it was stopped",
                    now,
                    now,
                    Usage(wall_seconds=0),
                ),
            )

    async def _resume(self, run: _Running) -> None:
        """Follows a task re-attached after a restart; its output is shipped from the start,
        and its outputs are uploaded as for any job (those that landed before the restart
        are not uploaded again)."""
        try:
            outcome = await self.backend.wait(run.task)
            await self._stage_out(run.task, outcome)
            self._ship(run, final=True)
            # The node may never have heard that it started (a repeat is harmless).
            self._queue(
                Report(
                    job_id=run.task.job_id,
                    attempt=run.task.attempt,
                    state=JobState.RUNNING,
                    at=outcome.started_at,
                ),
                None,
            )
            self._finish(run.task, outcome)
        except Exception as e:
            log.exception("task %s failed inside the agent", run.task.key)
            now = time.time()
            self._finish(
                run.task,
                Outcome(
                    JobState.FAILED, None, f"agent error: {e}", now, now, Usage(wall_seconds=0)
                ),
            )
        finally:
            self.running.pop(run.task.key, None)


def _assignment(task: Task) -> Assignment:
    return Assignment(
        job_id=task.job_id,
        attempt=task.attempt,
        tenant=task.tenant,
        spec=task.spec,
        devices=task.devices,
    )
