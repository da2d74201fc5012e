"""Jobs that run at another node of the tree, followed from the node they were submitted to.

A job pinned to a pool that another node minted (or placed there because only that pool
fits) is submitted to the pool's owner, found by resolution, with this node's signature,
its delegation chain and the tenant's name: the owner runs it for ``<tenant>.<this code>``.
The job keeps its id here. Its state, exit code and output are copied back as they change,
through the same path an agent's reports take, and a cancel here is passed on. The tenant
talks only to the node it submitted to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

import httpx

from computenet.model import Job, JobState, LogChunk, Report, ReportBatch
from computenet.model.job import MAX_ENV_BYTES, JobSpec, env_bytes
from computenet.node.errors import NodeError
from computenet.node.store import forwards as fwd_store
from computenet.node.store import jobs as job_store

if TYPE_CHECKING:
    from computenet.node.runtime import Node

log = logging.getLogger("computenet.node")
EVERY = 0.3
WAIT = 2.0  # long poll at the owner, per round


class Forwarder:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.following: dict[str, asyncio.Task[None]] = {}

    async def loop(self) -> None:
        fed = self.node.federation
        while True:
            await asyncio.sleep(EVERY)
            if not fed.chain:
                continue
            try:
                for w in await self.node.reading(fwd_store.waiting, fed.code):
                    await self._forward(w)
                for f in await self.node.reading(fwd_store.followed):
                    if f.job_id not in self.following:
                        task = asyncio.create_task(self._follow(f), name=f.job_id)
                        self.following[f.job_id] = task
                        task.add_done_callback(self._done)
            except Exception:
                log.exception("forwarding jobs failed")

    def _done(self, task: asyncio.Task[None]) -> None:
        self.following.pop(task.get_name(), None)

    async def close(self) -> None:
        for t in list(self.following.values()):
            t.cancel()
        await asyncio.gather(*self.following.values(), return_exceptions=True)

    async def _forward(self, w: fwd_store.Waiting) -> None:
        fed = self.node.federation
        try:
            res = await fed.resolve(w.pool)
        except NodeError as e:
            await self.node.writing(fwd_store.refuse, w.job_id, f"pool {w.pool}: {e.detail}")
            self.node.events.jobs.notify(w.job_id)
            return
        if res.record.kind != "pool" or not res.record.endpoints:
            await self.node.writing(fwd_store.refuse, w.job_id, f"{w.pool} is not a pool")
            return
        url, owner = res.record.endpoints[0], res.record.owner
        body = _as_submitted(w).model_dump_json().encode()
        try:
            r = await fed.call("POST", url, "/v1/jobs", content=body, tenant=w.tenant)
        except httpx.HTTPError as e:
            log.info("node %s not reachable for %s: %s", owner, w.job_id, e)
            return  # tried again next round
        if r.status_code != 201:
            detail = _detail(r)
            if 400 <= r.status_code < 500:
                reason = f"{owner} refused the job: {detail}"
                await self.node.writing(fwd_store.refuse, w.job_id, reason)
                self.node.events.jobs.notify(w.job_id)
            else:
                log.warning("forwarding %s to %s: %s", w.job_id, owner, detail)
            return
        remote = r.json()["id"]
        await self.node.writing(fwd_store.bind, w, url, owner, remote)
        log.info("job %s forwarded to %s as %s", w.job_id, owner, remote)
        self.node.events.jobs.notify(w.job_id)

    async def _follow(self, f: fwd_store.Followed) -> None:
        fed = self.node.federation
        offsets = {"stdout": 0, "stderr": 0}
        sent_cancel, state = False, JobState.SCHEDULED
        while not state.terminal:
            try:
                if not sent_cancel and await self.node.reading(
                    fwd_store.cancel_requested, f.job_id
                ):
                    await fed.call(
                        "POST", f.node_url, f"/v1/jobs/{f.remote_id}/cancel", tenant=f.tenant
                    )
                    sent_cancel = True
                r = await fed.call(
                    "GET",
                    f.node_url,
                    f"/v1/jobs/{f.remote_id}",
                    params={"wait": WAIT},
                    tenant=f.tenant,
                )
                if r.status_code != 200:
                    log.warning("following %s at %s: %s", f.job_id, f.owner, _detail(r))
                    await asyncio.sleep(1.0)
                    continue
                remote = Job.model_validate(r.json())
                if remote.state in (JobState.QUEUED, JobState.SCHEDULED):
                    why = remote.reason if remote.state is JobState.QUEUED else ""
                    if await self.node.writing(fwd_store.waits_there, f, why):
                        self.node.events.jobs.notify(f.job_id)
                chunks = await self._logs(f, offsets)
                reports = _reports(f, remote, state)
                if chunks or reports:
                    batch = ReportBatch(logs=chunks, reports=reports)
                    applied = await self.node.writing(job_store.apply_reports, f.pool, batch)
                    if applied.refused:
                        log.warning("reports for %s refused: %s", f.job_id, applied.refused)
                    self.node.events.jobs.notify(f.job_id)
                if reports:
                    state = reports[-1].state
            except httpx.HTTPError as e:
                log.info("lost %s while following %s: %s", f.owner, f.job_id, e)
                await asyncio.sleep(1.0)

    async def _logs(self, f: fwd_store.Followed, offsets: dict[str, int]) -> list[LogChunk]:
        """The output so far; only what was not copied yet is kept (offsets per stream)."""
        r = await self.node.federation.call(
            "GET", f.node_url, f"/v1/jobs/{f.remote_id}/logs", tenant=f.tenant
        )
        if r.status_code != 200:
            return []
        seen = {"stdout": 0, "stderr": 0}
        out = []
        for line in r.text.splitlines():
            chunk = json.loads(line)
            stream, data = chunk["stream"], chunk["data"]
            if stream not in seen:
                continue
            start = seen[stream]
            seen[stream] += len(data)
            if seen[stream] <= offsets[stream]:
                continue
            out.append(
                LogChunk(job_id=f.job_id, attempt=f.attempt, stream=stream, offset=start, data=data)
            )
            offsets[stream] = seen[stream]
        return out


def _as_submitted(w: fwd_store.Waiting) -> JobSpec:
    """The job sees the id its submitter knows it by, not the one its owner gives it,
    where its own env does not set one and the variable fits in the env's limit."""
    env = w.spec.env
    if "CNET_JOB_ID" in env or env_bytes(env) + 13 + len(w.job_id) > MAX_ENV_BYTES:
        return w.spec
    return w.spec.model_copy(update={"env": {"CNET_JOB_ID": w.job_id, **env}})


def _reports(f: fwd_store.Followed, remote: Job, state: JobState) -> list[Report]:
    """The remote job's progress as this attempt's reports, in order: a job that went from
    waiting to over between two looks still passes through RUNNING here."""
    out = []
    now = time.time()
    started = remote.started_at.timestamp() if remote.started_at else now
    ran = remote.state is JobState.RUNNING or (remote.state.terminal and remote.started_at)
    if ran and state in (JobState.SCHEDULED, JobState.STAGING):
        out.append(Report(job_id=f.job_id, attempt=f.attempt, state=JobState.RUNNING, at=started))
    if remote.state.terminal:
        ended = remote.ended_at.timestamp() if remote.ended_at else now
        out.append(
            Report(
                job_id=f.job_id,
                attempt=f.attempt,
                state=remote.state,
                at=ended,
                exit_code=remote.exit_code,
                reason=(remote.reason or "")[:4096],
            )
        )
    return out


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail") or r.status_code)
    except ValueError:
        return f"HTTP {r.status_code}"
