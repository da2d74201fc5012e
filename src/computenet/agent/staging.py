"""Data staging: a job's inputs into its working directory before it runs, its outputs
out after it completes.

An input this pool already holds is hard-linked from the data root (copied where the
working directory is on another file system): nothing moves. A dataset's copy here is
first checked against the version's tree hash, its files read again only where their
size or mtime changed since they were last hashed: a job that wrote to its inputs (they
share their inodes with the copy) spoils the copy, and the next job is refused it rather
than handed other data. A dataset held elsewhere is
fetched once into this pool's data root, ``/datasets/NAME/VERSION``, checked against the
version's tree hash, recorded with the node as a new replica, and linked from there, so
the next job that needs it here moves nothing either. Linked inputs share their inodes
with the pool's copy: a job must treat its inputs as read-only.

An output goes into this pool's data root when its destination is here (a dataset
version is always published from here), else to the other pool's data server. Outputs
are kept only when the job completed; a job whose data cannot be moved fails, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Literal

import httpx

from computenet.agent import workdir as job_files
from computenet.agent.backends import Task
from computenet.agent.link import NodeLink
from computenet.model import JobState
from computenet.model.dataset import (
    DatasetRef,
    StagingAsk,
    StagingLanded,
    StagingPlan,
    parse_data_uri,
    split_input,
)
from computenet.model.transfer import LinkSample, TransferResult
from computenet.sdk.client import ApiError
from computenet.transfer import client
from computenet.transfer.client import Options
from computenet.transfer.faults import Faults
from computenet.transfer.hashes import HashCache
from computenet.transfer.manifest import CHUNK, build, total_size
from computenet.transfer.pace import Pace
from computenet.transfer.paths import (
    PART,
    RESERVED,
    PathError,
    confine,
    fetch_area,
    normalise,
    remove,
    swap_in,
    within,
)
from computenet.transfer.quota import Quota
from computenet.transfer.wire import TransferError


class StagingError(Exception):
    """Data a job needs could not be put in place, or its output kept; the job ends in
    ``state`` (FAILED, or CANCELED when it was canceled while its inputs moved)."""

    def __init__(self, reason: str, state: JobState = JobState.FAILED) -> None:
        super().__init__(reason)
        self.state = state


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Whatever stops the data, as one reason that says which input or output it was."""
    try:
        yield
    except StagingError as e:
        raise StagingError(f"{what}: {e}") from None
    except OSError as e:  # its file name is the agent's own path: ``what`` names the place
        why = e.strerror or type(e).__name__
        if e.errno == errno.ENOTDIR:
            why = "a file stands where a directory must be on the way to it"
        raise StagingError(f"{what}: {why}") from e
    except (ApiError, TransferError, PathError, httpx.HTTPError) as e:
        raise StagingError(f"{what}: {e}") from e


HomeAccounts = Callable[[str, int | None, str], Quota | None]


def _options(tree_hash: str | None = None, pace: Pace | None = None) -> Options:
    # The agent never breaks its own copies on purpose.
    return Options(faults=Faults(), tree_hash=tree_hash, pace=pace)


def link_tree(src: Path, dest: Path, frozen: bool = False, own: bool = False) -> None:
    """``dest`` becomes ``src``'s file, or a tree of its files, by hard link where it can.
    ``frozen`` (a dataset's copy) takes the write bits off each file first: a link is
    the copy itself, and a job that opens its input to write is refused rather than
    changing the version for every later job. ``own``: ``src`` is the data root, whose
    data server's files stay out, as they do from a copy of the root."""

    def one(a: Path, b: Path) -> None:
        if frozen and (mode := os.lstat(a).st_mode) & 0o222:
            with contextlib.suppress(OSError):  # a copy on read-only storage, say
                os.chmod(a, mode & 0o7555)
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        one(src, dest)
        return
    for here, dirs, files in os.walk(src):
        rel = Path(here).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        dirs[:] = [
            d
            for d in dirs
            if not (Path(here) / d).is_symlink()
            and not (own and here == str(src) and d == RESERVED)
        ]
        for f in files:
            a = Path(here) / f
            if not f.endswith(PART) and not a.is_symlink() and a.is_file():  # no FIFO
                one(a, dest / rel / f)


def _part(copy: Path, inside: str, uri: str) -> Path:
    """The path inside a version's copy that a job input names; the copy itself for ''."""
    if not inside:
        return copy
    try:
        part = confine(copy, inside, links=False)
    except PathError as e:
        raise StagingError(f"in {uri}: {e}") from e
    if not part.exists():
        raise StagingError(f"no such file or directory in {uri}")
    return part


def place(src: Path, dest: Path, tag: str) -> None:
    """Links ``src`` beside ``dest``, then renames it into place: nobody sees half of it."""
    tmp = dest.with_name(f".{dest.name}.{tag}.tmp")
    remove(tmp)
    link_tree(src, tmp)
    swap_in(tmp, dest)


class Stager:
    def __init__(
        self,
        link: NodeLink,
        data_root: Path,
        homes: HomeAccounts | None = None,
        quota: Quota | None = None,
        fetch_rate: int | None = None,
    ) -> None:
        self.link = link
        self._pace = None if fetch_rate is None else Pace(fetch_rate)  # shared by every fetch
        self.root = data_root
        self._homes = homes  # the data server's accounts of tenants' home quotas
        self._quota = quota  # and of the pool's data quota: staging is held to both
        self.hashes = HashCache(ctime=False)  # staging links the files, which sets ctime
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def inputs(self, task: Task) -> None:
        for i, item in enumerate(task.spec.inputs):
            uri, inside = split_input(item.uri)
            # One fetch of a dataset into the pool at a time; who waits then links it.
            with _failing(f"staging input {item.uri}"):
                async with self._locks[uri]:
                    await self._input(task, i, confine(task.workdir, item.path), inside)

    async def _input(self, task: Task, index: int, dest: Path, inside: str = "") -> None:
        """Links the input into place; for a path inside a dataset version (``inside``),
        the version is staged whole, checked, and that path of it linked."""
        ask = StagingAsk(job_id=task.job_id, attempt=task.attempt, kind="input", index=index)
        plan = await self.link.staging(ask)
        if plan.local is not None:
            async with self._locks[normalise(plan.local)]:
                src = confine(self.root, plan.local, links=False)
                why: str | None = f"{plan.local}: no such file or directory in this pool"
                if src.exists():
                    why = await self._changed(src, plan)
                if why is None:
                    own = not normalise(plan.local) and not inside
                    src = _part(src, inside, plan.uri)
                    frozen = plan.tree_hash is not None
                    await asyncio.to_thread(link_tree, src, dest, frozen, own)
                    return
            if plan.tree_hash is None:  # a pool path: nothing to fetch in its stead
                raise StagingError(why)
            # No longer the version: the node forgets it, and names a copy to fetch.
            try:
                plan = await self.link.staging(ask.model_copy(update={"spoiled": plan.local}))
            except ApiError as e:
                raise StagingError(f"{why}; no other copy could be fetched: {e}") from e
            if plan.grant is None or plan.keep is None:
                raise StagingError(why)
        assert plan.grant is not None
        if plan.keep is None:  # a pool path elsewhere: straight into the working directory
            dest.parent.mkdir(parents=True, exist_ok=True)
            await client.get(plan.grant, dest, _options(pace=self._pace))
            return
        async with self._locks[normalise(plan.keep)]:
            keep = await asyncio.to_thread(self._fetch_target, plan.keep)
            # Fetched meanwhile (and recorded), for a job that named the version otherwise?
            if not keep.exists() or await self._changed(keep, plan) is not None:
                async with self._claimed(plan, keep):
                    result = await self._fetch(plan, keep)
                files = result.counters.files + result.counters.files_skipped
                k, moved = result.counters, None
                if not k.chunks_present and 0.001 <= result.seconds <= 7 * 86400:
                    moved = LinkSample(  # a fetch that resumed would overstate the link's time
                        source=plan.grant.ticket.claims.pool, bytes=k.bytes, seconds=result.seconds
                    )
                await self._landed(
                    task,
                    "input",
                    index,
                    plan.keep,
                    result.tree_hash,
                    result.total_bytes,
                    files,
                    moved,
                )
            await asyncio.to_thread(link_tree, _part(keep, inside, plan.uri), dest, True)
        gone = plan.discard
        if gone is not None and not (
            within(normalise(gone), normalise(plan.keep))
            or within(normalise(plan.keep), normalise(gone))
        ):  # what is left of it only takes space: no job fails for it
            async with self._locks[normalise(gone)]:
                with contextlib.suppress(StagingError, PathError, OSError):
                    await asyncio.to_thread(lambda: remove(self._fetch_target(gone)))

    @contextlib.asynccontextmanager
    async def _claimed(self, plan: StagingPlan, keep: Path) -> AsyncIterator[None]:
        """A dataset fetched into the pool takes space in its data root: held to the
        pool's data quota as a put is (what it replaces is freed)."""
        if self._quota is None:
            yield
            return
        there = keep.exists() and not keep.is_symlink()
        adds = (plan.total_bytes or 0) - (await asyncio.to_thread(total_size, keep) if there else 0)
        await self._quota.claim(adds)
        landed = False
        try:
            yield
            landed = True
        finally:
            self._quota.settle(adds, landed)

    async def _fetch(self, plan: StagingPlan, keep: Path) -> TransferResult:
        """Fetches a dataset into the reserved fetch area, then renames it into place once
        whole and checked: what was there before (a spoiled copy) is replaced, never
        merged into, and an interrupted fetch resumes there."""
        assert plan.grant is not None and plan.keep is not None
        landing = fetch_area(self.root, plan.keep)
        landing.parent.mkdir(parents=True, exist_ok=True)
        result = await client.get(plan.grant, landing, _options(plan.tree_hash, self._pace))
        if result.tree_hash != plan.tree_hash:
            await asyncio.to_thread(remove, landing)
            raise StagingError(f"the copy's tree hash is not {plan.uri}'s: refused")
        if not landing.exists():  # an empty tree: nothing landed
            landing.mkdir()
        keep.parent.mkdir(parents=True, exist_ok=True)
        # Out of the fetch area first: an agent stopped half way through the swap leaves
        # the old tree under this name, not where the next fetch would resume into.
        tomb = landing.with_name(landing.name + ".old")
        await asyncio.to_thread(remove, tomb)
        os.replace(landing, tomb)
        await asyncio.to_thread(swap_in, tomb, keep)
        return result

    def _fetch_target(self, rel: str) -> Path:
        """Where a fetched copy goes, refused where a link on the way would send it (and
        the removal of what was there) elsewhere."""
        keep = confine(self.root, rel)
        if keep != self.root.resolve() / normalise(rel):
            raise StagingError(f"/{normalise(rel)} goes through a link: nothing is fetched there")
        return keep

    async def _changed(self, src: Path, plan: StagingPlan) -> str | None:
        """Why this pool's copy of a dataset is not the version any more, if it is not."""
        if plan.tree_hash is None:
            return None
        m = (await asyncio.to_thread(build, src, CHUNK, self.hashes)).manifest
        if m.tree_hash == plan.tree_hash:
            return None
        return (
            f"this pool's copy at {plan.local} has changed since it was recorded (its tree "
            f"hash is {m.tree_hash[:16]}…, not {plan.tree_hash[:16]}…): a job that wrote to "
            "its inputs, or a hand, changed it"
        )

    async def _landed(
        self,
        task: Task,
        kind: Literal["input", "output"],
        index: int,
        path: str,
        tree_hash: str,
        total_bytes: int,
        files: int,
        moved: LinkSample | None = None,
    ) -> None:
        await self.link.landed(
            StagingLanded(
                job_id=task.job_id,
                attempt=task.attempt,
                kind=kind,
                index=index,
                path=path,
                tree_hash=tree_hash,
                total_bytes=total_bytes,
                files=files,
                moved=moved,
            )
        )

    async def outputs(self, task: Task) -> None:
        """Each output, once: a marker in the job's directory records every one that has
        landed, so that an agent restarted half way (the job adopted again) does not
        publish the same output twice."""
        for i, item in enumerate(task.spec.outputs):
            marker = task.workdir / f"output-{i}.staged"
            if marker.exists():
                continue
            with _failing(f"output {item.path} to {item.uri}"):
                src = confine(task.workdir, item.path, what="the job's working directory")
                await self._output(task, i, src)
            job_files.write(marker)

    async def _output(self, task: Task, index: int, src: Path) -> None:
        if not src.exists():
            raise StagingError("the job did not write it")
        size = await asyncio.to_thread(total_size, src)
        ask = StagingAsk(
            job_id=task.job_id, attempt=task.attempt, kind="output", index=index, size=size
        )
        plan = await self.link.staging(ask)
        if plan.grant is not None:
            await client.put(plan.grant, src, _options())
            return
        assert plan.local is not None
        dest = confine(self.root, plan.local, links=False)
        tag = f"{task.job_id}.{task.attempt}"
        account = None
        if plan.home is not None and self._homes is not None:
            tenant = plan.home.strip("/").partition("/")[2]
            account = self._homes(tenant, plan.home_quota, plan.local.strip("/"))
        # Held to the pool's data quota and its tenant's home quota as a put is: what it
        # replaces is freed.
        there = dest.exists() and not dest.is_symlink()
        adds = size - (await asyncio.to_thread(total_size, dest) if there else 0)
        held = [q for q in (self._quota, account) if q is not None]
        claimed: list[Quota] = []
        placed = False
        try:
            for q in held:
                await q.claim(adds, plan.home_quota if q is account else None)
                claimed.append(q)
            await asyncio.to_thread(place, src, dest, tag)
            placed = True
        finally:
            for q in claimed:
                q.settle(adds, placed)
        if not isinstance(parse_data_uri(plan.uri), DatasetRef):
            return
        try:
            m = (await asyncio.to_thread(build, dest)).manifest
            await self._landed(
                task, "output", index, plan.local, m.tree_hash, m.total_bytes, len(m.files)
            )
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            raise
