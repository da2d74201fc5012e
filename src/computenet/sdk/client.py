"""Sync and async clients for a node's REST API.

Both share one description of each call (``_Call``): the async client is not a wrapper
around the sync one or the reverse, so neither pays for the other.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from computenet import config
from computenet.model import (
    CalibrationRequest,
    FieldError,
    Job,
    JobBatch,
    JobPage,
    JobSpec,
    JobState,
    Pool,
    Problem,
    Provider,
    Role,
    Tenant,
    TenantPolicy,
    Token,
    TokenCreate,
    TokenSecret,
)
from computenet.model.dataset import (
    SCHEME,
    Dataset,
    DatasetPage,
    DatasetPublish,
    DatasetRef,
    DatasetRemoval,
    DatasetVersion,
    DataURIError,
    ReplicaAdd,
    parse_dataset,
)
from computenet.model.discovery import DiscoverPage, PoolSummary
from computenet.model.federation import Invite, InviteCreate, Resolution, TreeView
from computenet.model.job import MAX_BATCH
from computenet.model.plan import Plan
from computenet.model.transfer import (
    Link,
    PoolListing,
    Removal,
    SyncLevel,
    TransferGrant,
    TransferRequest,
    TransferResult,
)

if TYPE_CHECKING:
    from computenet.transfer.client import Options, Watcher
    from computenet.transfer.copy import Api

T = TypeVar("T")
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ApiError(Exception):
    """A node's problem+json answer, or a failure to reach the node at all."""

    def __init__(self, status: int, problem: Problem) -> None:
        self.status = status
        self.problem = problem
        field = f" ({problem.errors[0].field})" if problem.errors else ""
        super().__init__(
            f"{problem.title}{field}: {problem.detail}" if problem.detail else problem.title
        )


class JobFailed(Exception):
    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} ended {job.state.value}: {job.reason or job.exit_code}")


@dataclass
class _Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    model: Any = None
    timeout: float | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": {k: v for k, v in self.params.items() if v is not None}}
        if self.body is not None:
            data = (
                self.body.model_dump(mode="json", exclude_unset=True)
                if isinstance(self.body, BaseModel)
                else self.body
            )
            out["content"] = json.dumps(data)
            out["headers"] = {"content-type": "application/json"}
        if self.timeout is not None:
            out["timeout"] = httpx.Timeout(self.timeout, connect=5.0)
        return out

    def parse(self, resp: httpx.Response) -> Any:
        check(resp)
        if self.model is None or resp.status_code == 204:
            return None
        return TypeAdapter(self.model).validate_json(resp.content)


def check(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        problem = Problem.model_validate_json(resp.content)
    except ValueError:
        text = resp.text[:200] if resp.text else resp.reason_phrase
        problem = Problem(title=resp.reason_phrase or "error", status=resp.status_code, detail=text)
    raise ApiError(resp.status_code, problem)


def _states(state: JobState | str | Sequence[JobState | str] | None) -> list[str] | None:
    """States as the node names them, from members or names in any case ("running")."""
    if not state:
        return None
    given = [state] if isinstance(state, str) else state
    return [JobState(str(s).upper()).value for s in given]


def _spec(spec: JobSpec | dict[str, Any] | None, kwargs: dict[str, Any]) -> JobSpec:
    """Checked here with the node's own model, and refused the way the node would refuse it."""
    try:
        if spec is None:
            return JobSpec.model_validate(kwargs)
        if isinstance(spec, dict):
            return JobSpec.model_validate({**spec, **kwargs})
        return JobSpec.model_validate({**spec.model_dump(), **kwargs}) if kwargs else spec
    except ValidationError as e:
        errors = [
            FieldError(
                field=".".join(str(p) for p in err["loc"]) or "spec",
                message=str(err["msg"]).removeprefix("Value error, "),
            )
            for err in e.errors()[:20]
        ]
        detail = "; ".join(f"{x.field}: {x.message}" for x in errors[:5])
        raise ApiError(
            422, Problem(title="Invalid request", status=422, detail=detail, errors=errors)
        ) from None


def _chunks(specs: Iterable[JobSpec | dict[str, Any]]) -> Iterator[list[JobSpec]]:
    chunk: list[JobSpec] = []
    for spec in specs:
        chunk.append(_spec(spec, {}))
        if len(chunk) == MAX_BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Calls:
    """Every API call, described once."""

    @staticmethod
    def submit(spec: JobSpec) -> _Call:
        return _Call("POST", "/v1/jobs", body=spec, model=Job)

    @staticmethod
    def plan(spec: JobSpec) -> _Call:
        return _Call("POST", "/v1/jobs/plan", body=spec, model=Plan)

    @staticmethod
    def submit_many(specs: list[JobSpec]) -> _Call:
        return _Call("POST", "/v1/jobs/batch", body=JobBatch(jobs=specs), model=list[Job])

    @staticmethod
    def get(job_id: str, wait: float = 0) -> _Call:
        return _Call(
            "GET", f"/v1/jobs/{job_id}", {"wait": wait or None}, model=Job, timeout=wait + 30
        )

    @staticmethod
    def list(
        state: JobState | str | Sequence[JobState | str] | None,
        pool: str | None,
        name: str | None,
        limit: int,
        cursor: str | None,
        all_tenants: bool,
    ) -> _Call:
        params = {
            "state": _states(state),
            "pool": pool,
            "name": name,
            "limit": limit,
            "cursor": cursor,
            "all": all_tenants or None,
        }
        return _Call("GET", "/v1/jobs", params, model=JobPage)

    @staticmethod
    def cancel(job_id: str) -> _Call:
        return _Call("POST", f"/v1/jobs/{job_id}/cancel", model=Job)

    @staticmethod
    def counts() -> _Call:
        return _Call("GET", "/v1/jobs/counts", model=dict[str, int])

    @staticmethod
    def discover(q: str, order: str | None, include_all: bool, limit: int, scope: str) -> _Call:
        params = {
            "q": q or None,
            "order": order,
            "all": include_all or None,
            "limit": limit,
            "scope": None if scope == "local" else scope,
        }
        return _Call("GET", "/v1/discover", params, model=DiscoverPage)

    @staticmethod
    def transfer(req: TransferRequest) -> _Call:
        return _Call("POST", "/v1/transfers", body=req, model=TransferGrant)

    @staticmethod
    def datasets(after: str | None = None) -> _Call:
        return _Call("GET", "/v1/datasets", {"after": after, "limit": 1000}, model=DatasetPage)

    @staticmethod
    def dataset(name: str) -> _Call:
        return _Call("GET", f"/v1/datasets/{name}", model=Dataset)

    @staticmethod
    def publish(body: DatasetPublish) -> _Call:
        return _Call("POST", "/v1/datasets", body=body, model=DatasetVersion)

    @staticmethod
    def forget(name: str, version: str) -> _Call:
        return _Call("DELETE", f"/v1/datasets/{name}/{version}", model=DatasetVersion)

    @staticmethod
    def add_replica(name: str, version: str, body: ReplicaAdd) -> _Call:
        path = f"/v1/datasets/{name}/{version}/replicas"
        return _Call("POST", path, body=body, model=DatasetVersion)

    @staticmethod
    def resolve(cpi: str) -> _Call:
        return _Call("GET", f"/v1/resolve/{cpi}", model=Resolution)

    @staticmethod
    def tree() -> _Call:
        return _Call("GET", "/v1/federation/tree", model=TreeView)

    @staticmethod
    def invite(label: str, ttl: float) -> _Call:
        return _Call(
            "POST", "/v1/federation/invites", body=InviteCreate(label=label, ttl=ttl), model=Invite
        )

    @staticmethod
    def pools() -> _Call:
        return _Call("GET", "/v1/pools", model=list[Pool])

    @staticmethod
    def links() -> _Call:
        return _Call("GET", "/v1/links", model=list[Link])

    @staticmethod
    def pool(cpi: str) -> _Call:
        return _Call("GET", f"/v1/pools/{cpi}", model=Pool)

    @staticmethod
    def calibrate(cpi: str) -> _Call:
        return _Call("POST", f"/v1/pools/{cpi}/calibrate", model=CalibrationRequest)

    @staticmethod
    def providers() -> _Call:
        return _Call("GET", "/v1/providers", model=list[Provider])

    @staticmethod
    def status() -> _Call:
        return _Call("GET", "/v1/status", model=dict[str, Any])

    @staticmethod
    def create_token(name: str, tenant: str | None, role: Role) -> _Call:
        return _Call(
            "POST",
            "/v1/tokens",
            body=TokenCreate(name=name, tenant=tenant, role=role),
            model=TokenSecret,
        )

    @staticmethod
    def tenants() -> _Call:
        return _Call("GET", "/v1/tenants", model=list[Tenant])

    @staticmethod
    def set_tenant(name: str, policy: TenantPolicy) -> _Call:
        return _Call("PUT", f"/v1/tenants/{name}", body=policy, model=Tenant)

    @staticmethod
    def tokens() -> _Call:
        return _Call("GET", "/v1/tokens", model=list[Token])

    @staticmethod
    def revoke_token(token_id: str) -> _Call:
        return _Call("DELETE", f"/v1/tokens/{token_id}", model=Token)


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _log_line(line: str) -> dict[str, Any] | None:
    return json.loads(line) if line.strip() else None


class CopyOptions(TypedDict, total=False):
    """``copy``'s options: streams (default: by size), sync (none, exists, size, mtime,
    checksum), verify (check each chunk's hash as it lands; on), deadline (seconds), tls (default: as
    the pool advises), compress (zstd; default: when a sample shrinks), watcher (told the
    total, then each verified chunk)."""

    streams: int | None
    sync: SyncLevel | str
    verify: bool
    deadline: float | None
    tls: bool | None
    compress: bool | None
    watcher: Watcher | None


def _copy_options(given: CopyOptions) -> Options:
    """Checked here, as the CLI checks its flags: a bad option fails before any request,
    naming the option."""
    from computenet.model.transfer import MAX_STREAMS
    from computenet.transfer.client import Options

    unknown = sorted(set(given) - set(CopyOptions.__annotations__))
    if unknown:
        raise TypeError(f"copy() got unknown options: {', '.join(unknown)}")
    try:
        sync = SyncLevel(given.get("sync", SyncLevel.none))
    except ValueError:
        known = ", ".join(x.value for x in SyncLevel)
        raise ValueError(f"sync must be one of {known}, not {given.get('sync')!r}") from None
    streams = given.get("streams")
    whole = isinstance(streams, int) and not isinstance(streams, bool)
    if streams is not None and not (whole and 1 <= streams <= MAX_STREAMS):
        raise ValueError(f"streams must be a whole number from 1 to {MAX_STREAMS}, not {streams!r}")
    deadline = given.get("deadline")
    if deadline is not None and not (isinstance(deadline, int | float) and deadline > 0):
        raise ValueError(f"deadline must be a number of seconds above 0, not {deadline!r}")
    return Options(**{**given, "sync": sync})  # type: ignore[arg-type]


def _dataset_ref(target: str) -> DatasetRef:
    """``NAME@VERSION`` or the full URI; a bad one raises ``TransferError``."""
    from computenet.transfer.wire import TransferError

    try:
        return parse_dataset(target if target.startswith("cnet://") else SCHEME + target)
    except DataURIError as e:
        raise TransferError(str(e)) from e


def _copy_api(do: Callable[[_Call], Awaitable[Any]]) -> Api:
    """What ``copy`` asks of the node, through either client's own transport."""
    from computenet.transfer.copy import Api

    async def dataset(name: str) -> Dataset | None:
        try:
            found: Dataset = await do(_Calls.dataset(name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return found

    async def replica(name: str, version: str, body: ReplicaAdd) -> DatasetVersion | None:
        try:
            out: DatasetVersion = await do(_Calls.add_replica(name, version, body))
        except ApiError as e:
            theirs = e.problem.errors and e.problem.errors[0].field == "name"
            if e.status == 403 and theirs:  # another tenant's dataset: the copy is the caller's
                return None
            raise
        return out

    async def grant(req: TransferRequest) -> TransferGrant:
        out: TransferGrant = await do(_Calls.transfer(req))
        return out

    async def publish(body: DatasetPublish) -> DatasetVersion:
        out: DatasetVersion = await do(_Calls.publish(body))
        return out

    async def pools() -> builtins.list[Pool]:
        out: builtins.list[Pool] = await do(_Calls.pools())
        return out

    async def forget(name: str, version: str) -> DatasetVersion:
        out: DatasetVersion = await do(_Calls.forget(name, version))
        return out

    return Api(
        grant=grant,
        dataset=dataset,
        publish=publish,
        replica=replica,
        pools=pools,
        forget=forget,
    )


def unreachable(url: str, e: httpx.TransportError) -> ApiError:
    return ApiError(
        0, Problem(title="Node unreachable", status=0, detail=f"cannot reach {url}: {e}")
    )


class Client:
    """``Client()`` talks to ``CNET_URL`` (default http://127.0.0.1:8787) with the token from
    ``CNET_TOKEN`` or the credentials file that ``cnet up`` writes."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.url = (url or config.default_url()).rstrip("/")
        self.token = token or config.token_for(self.url)
        self._http = httpx.Client(
            base_url=self.url,
            headers=_headers(self.token),
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: _Call) -> Any:
        try:
            resp = self._http.request(call.method, call.path, **call.kwargs())
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from e
        return call.parse(resp)

    def submit(self, spec: JobSpec | dict[str, Any] | None = None, **kwargs: Any) -> Job:
        job: Job = self._do(_Calls.submit(_spec(spec, kwargs)))
        return job

    def plan(self, spec: JobSpec | dict[str, Any] | None = None, **kwargs: Any) -> Plan:
        """The optimizer table for a job, without submitting it."""
        out: Plan = self._do(_Calls.plan(_spec(spec, kwargs)))
        return out

    def submit_many(self, specs: Iterable[JobSpec | dict[str, Any]]) -> builtins.list[Job]:
        """Submits in batches of 1,000; each batch is accepted whole or refused whole."""
        out: builtins.list[Job] = []
        for chunk in _chunks(specs):
            out.extend(self._do(_Calls.submit_many(chunk)))
        return out

    def get(self, job_id: str, wait: float = 0) -> Job:
        job: Job = self._do(_Calls.get(job_id, wait))
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has ended; with ``timeout``, as it is then, ended or not (look
        at its ``state``)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
            job = self.get(job_id, wait=max(0.0, left))
            if job.state.terminal or (deadline is not None and time.monotonic() >= deadline):
                return job

    def list(
        self,
        state: JobState | str | Sequence[JobState | str] | None = None,
        pool: str | None = None,
        name: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        all_tenants: bool = False,
    ) -> JobPage:
        page: JobPage = self._do(_Calls.list(state, pool, name, limit, cursor, all_tenants))
        return page

    def cancel(self, job_id: str) -> Job:
        job: Job = self._do(_Calls.cancel(job_id))
        return job

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = self._do(_Calls.counts())
        return out

    def pools(self) -> builtins.list[Pool]:
        out: builtins.list[Pool] = self._do(_Calls.pools())
        return out

    def pool(self, cpi: str) -> Pool:
        out: Pool = self._do(_Calls.pool(cpi))
        return out

    def links(self) -> builtins.list[Link]:
        """The links between pools as the node has measured them (see docs/datasets.md)."""
        out: builtins.list[Link] = self._do(_Calls.links())
        return out

    def calibrate(self, pool: str) -> CalibrationRequest:
        """Asks the pool's agent to measure again; ``pool(cpi)`` shows the new figures once
        a machine's calibration is newer than ``requested_at``."""
        out: CalibrationRequest = self._do(_Calls.calibrate(pool))
        return out

    def discover(
        self,
        q: str = "",
        order: str | None = None,
        include_all: bool = False,
        limit: int = 100,
        scope: str = "local",
    ) -> DiscoverPage:
        """Pools that can take the query's resources now, e.g. ``gpu>=2 region=cn-east``;
        ``scope="tree"`` includes the pools of every node in the hierarchy."""
        page: DiscoverPage = self._do(_Calls.discover(q, order, include_all, limit, scope))
        return page

    def resolve(self, cpi: str) -> Resolution:
        """What a CPI names, from the node that owns it, signed and verified on the way."""
        out: Resolution = self._do(_Calls.resolve(cpi))
        return out

    def tree(self) -> TreeView:
        out: TreeView = self._do(_Calls.tree())
        return out

    def invite(self, label: str, ttl: float = 3600) -> Invite:
        """A one-time token for a child node to join under this one (admin)."""
        out: Invite = self._do(_Calls.invite(label, ttl))
        return out

    def watch(self, q: str = "", all_pools: bool = False) -> Iterator[PoolSummary]:
        """Every matching pool, then each change as it happens (server-sent events).

        Like :meth:`discover`, the first listing holds online pools unless ``all_pools``;
        a pool that goes offline later is still sent once, so the watcher sees it go.
        """
        params: dict[str, str] = {"q": q} if q else {}
        if all_pools:
            params["all"] = "true"
        try:
            with self._http.stream(
                "GET",
                "/v1/discover/stream",
                params=params,
                timeout=httpx.Timeout(None, connect=5.0),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    check(resp)
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: {}":
                        yield PoolSummary.model_validate_json(line[6:])
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from e

    def providers(self) -> builtins.list[Provider]:
        out: builtins.list[Provider] = self._do(_Calls.providers())
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self._do(_Calls.status())
        return out

    def create_token(
        self, name: str, tenant: str | None = None, role: Role = Role.tenant
    ) -> TokenSecret:
        out: TokenSecret = self._do(_Calls.create_token(name, tenant, role))
        return out

    def tenants(self) -> builtins.list[Tenant]:
        out: builtins.list[Tenant] = self._do(_Calls.tenants())
        return out

    def set_tenant(
        self,
        name: str,
        weight: float = 1.0,
        max_cpus: float | None = None,
        max_gpus: int | None = None,
        max_data: int | None = None,
    ) -> Tenant:
        """Weight for fair share and quotas (admin); ``max_data``: bytes the tenant's home
        may hold in each pool."""
        policy = TenantPolicy(
            weight=weight, max_cpus=max_cpus, max_gpus=max_gpus, max_data=max_data
        )
        out: Tenant = self._do(_Calls.set_tenant(name, policy))
        return out

    def tokens(self) -> builtins.list[Token]:
        out: builtins.list[Token] = self._do(_Calls.tokens())
        return out

    def revoke_token(self, token_id: str) -> Token:
        out: Token = self._do(_Calls.revoke_token(token_id))
        return out

    def logs(self, job_id: str, follow: bool = False) -> Iterator[dict[str, Any]]:
        """Chunks as ``{"attempt", "stream", "data"}``; with ``follow`` until the job ends."""
        params = {"follow": "true"} if follow else {}
        try:
            with self._http.stream(
                "GET",
                f"/v1/jobs/{job_id}/logs",
                params=params,
                timeout=httpx.Timeout(None, connect=5.0),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    check(resp)
                for line in resp.iter_lines():
                    chunk = _log_line(line)
                    if chunk is not None:
                        yield chunk
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from e

    def _api(self) -> Api:
        """What a copy asks of the node, each call on a thread: the copy runs on a loop."""

        def do(call: _Call) -> Awaitable[Any]:
            return asyncio.to_thread(self._do, call)

        return _copy_api(do)

    def ticket(self, request: TransferRequest | dict[str, Any]) -> TransferGrant:
        """A signed ticket for one pool path and direction, and where to use it."""
        out: TransferGrant = self._do(_Calls.transfer(TransferRequest.model_validate(request)))
        return out

    def copy(
        self,
        src: str,
        dst: str,
        pool: str | None = None,
        **options: Unpack[CopyOptions],
    ) -> TransferResult:
        """Copies between a local path, a pool path (``POOL-CPI:/path``) and a dataset
        (``cnet://dataset/NAME[@VERSION]``), a file or a directory; run it again after an
        interruption to move only the rest. ``pool`` is where a new dataset version goes
        (default: the source's pool, else the first pool online)."""
        from computenet.transfer.copy import copy_data

        return asyncio.run(copy_data(src, dst, self._api(), _copy_options(options), pool))

    def ls(
        self,
        target: str,
        after: str | None = None,
        limit: int | None = None,
        tls: bool | None = None,
    ) -> PoolListing:
        """What a pool path (``POOL-CPI:/path``) or a dataset holds: a directory's entries
        in name order, or the file itself. With ``limit``, one page: its ``next`` is the
        ``after`` of the page that follows."""
        from computenet.transfer.listing import ls

        return asyncio.run(ls(target, self._api(), after, limit, tls))

    def rm(self, target: str, recursive: bool = False, tls: bool | None = None) -> Removal:
        """Removes a pool path (``POOL-CPI:/path``): a file or a link, or with ``recursive``
        a directory and everything under it. A dataset's copy is removed with
        ``remove_dataset``."""
        from computenet.transfer.removal import rm

        return asyncio.run(rm(target, self._api().grant, recursive, tls))

    def remove_dataset(self, target: str, tls: bool | None = None) -> DatasetRemoval:
        """Removes one version (``NAME@VERSION`` or ``cnet://dataset/NAME@VERSION``): the
        node forgets it, then each copy's data is removed; copies that could not be are in
        ``left``. Only the dataset's owner (or an admin) may."""
        from computenet.transfer.removal import drop_version

        return asyncio.run(drop_version(self._api(), _dataset_ref(target), tls))

    def datasets(self) -> builtins.list[DatasetVersion]:
        """Every version of every dataset, newest first within a name, with its replicas."""
        out: builtins.list[DatasetVersion] = []
        after: str | None = None
        while True:
            page: DatasetPage = self._do(_Calls.datasets(after))
            out += page.items
            if (after := page.next) is None:
                return out

    def dataset(self, name: str) -> Dataset:
        out: Dataset = self._do(_Calls.dataset(name))
        return out

    def publish(self, body: DatasetPublish | dict[str, Any]) -> DatasetVersion:
        """Registers a tree already in a pool as a new version (``copy`` to a dataset URI
        does this for you, with the tree hash its copy verified)."""
        out: DatasetVersion = self._do(_Calls.publish(DatasetPublish.model_validate(body)))
        return out

    def run(self, command: builtins.list[str], **kwargs: Any) -> Job:
        """Submit, wait, and return the finished job (raises ``JobFailed`` unless COMPLETE)."""
        job = self.submit(command=command, **kwargs)
        job = self.wait(job.id)
        if job.state is not JobState.COMPLETE:
            raise JobFailed(job)
        return job


class AsyncClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_connections: int = 100,
    ) -> None:
        self.url = (url or config.default_url()).rstrip("/")
        self.token = token or config.token_for(self.url)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_headers(self.token),
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: _Call) -> Any:
        try:
            resp = await self._http.request(call.method, call.path, **call.kwargs())
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from e
        return call.parse(resp)

    async def submit(self, spec: JobSpec | dict[str, Any] | None = None, **kwargs: Any) -> Job:
        job: Job = await self._do(_Calls.submit(_spec(spec, kwargs)))
        return job

    async def submit_many(self, specs: Iterable[JobSpec | dict[str, Any]]) -> builtins.list[Job]:
        out: builtins.list[Job] = []
        for chunk in _chunks(specs):
            out.extend(await self._do(_Calls.submit_many(chunk)))
        return out

    async def get(self, job_id: str, wait: float = 0) -> Job:
        job: Job = await self._do(_Calls.get(job_id, wait))
        return job

    async def wait(self, job_id: str) -> Job:
        while True:
            job = await self.get(job_id, wait=30)
            if job.state.terminal:
                return job

    async def list(
        self,
        state: JobState | str | Sequence[JobState | str] | None = None,
        pool: str | None = None,
        name: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        all_tenants: bool = False,
    ) -> JobPage:
        page: JobPage = await self._do(_Calls.list(state, pool, name, limit, cursor, all_tenants))
        return page

    async def cancel(self, job_id: str) -> Job:
        job: Job = await self._do(_Calls.cancel(job_id))
        return job

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = await self._do(_Calls.counts())
        return out

    async def pools(self) -> builtins.list[Pool]:
        out: builtins.list[Pool] = await self._do(_Calls.pools())
        return out

    async def pool(self, cpi: str) -> Pool:
        out: Pool = await self._do(_Calls.pool(cpi))
        return out

    async def links(self) -> builtins.list[Link]:
        out: builtins.list[Link] = await self._do(_Calls.links())
        return out

    async def calibrate(self, pool: str) -> CalibrationRequest:
        out: CalibrationRequest = await self._do(_Calls.calibrate(pool))
        return out

    async def logs(self, job_id: str, follow: bool = False) -> AsyncIterator[dict[str, Any]]:
        params = {"follow": "true"} if follow else {}
        try:
            async with self._http.stream(
                "GET",
                f"/v1/jobs/{job_id}/logs",
                params=params,
                timeout=httpx.Timeout(None, connect=5.0),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    check(resp)
                async for line in resp.aiter_lines():
                    chunk = _log_line(line)
                    if chunk is not None:
                        yield chunk
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from e

    async def ticket(self, request: TransferRequest | dict[str, Any]) -> TransferGrant:
        req = TransferRequest.model_validate(request)
        out: TransferGrant = await self._do(_Calls.transfer(req))
        return out

    async def copy(
        self,
        src: str,
        dst: str,
        pool: str | None = None,
        **options: Unpack[CopyOptions],
    ) -> TransferResult:
        from computenet.transfer.copy import copy_data

        return await copy_data(src, dst, _copy_api(self._do), _copy_options(options), pool)

    async def ls(
        self,
        target: str,
        after: str | None = None,
        limit: int | None = None,
        tls: bool | None = None,
    ) -> PoolListing:
        from computenet.transfer.listing import ls

        return await ls(target, _copy_api(self._do), after, limit, tls)

    async def rm(self, target: str, recursive: bool = False, tls: bool | None = None) -> Removal:
        from computenet.transfer.removal import rm

        return await rm(target, _copy_api(self._do).grant, recursive, tls)

    async def remove_dataset(self, target: str, tls: bool | None = None) -> DatasetRemoval:
        from computenet.transfer.removal import drop_version

        return await drop_version(_copy_api(self._do), _dataset_ref(target), tls)

    async def datasets(self) -> builtins.list[DatasetVersion]:
        out: builtins.list[DatasetVersion] = []
        after: str | None = None
        while True:
            page: DatasetPage = await self._do(_Calls.datasets(after))
            out += page.items
            if (after := page.next) is None:
                return out

    async def dataset(self, name: str) -> Dataset:
        out: Dataset = await self._do(_Calls.dataset(name))
        return out

    async def publish(self, body: DatasetPublish | dict[str, Any]) -> DatasetVersion:
        out: DatasetVersion = await self._do(_Calls.publish(DatasetPublish.model_validate(body)))
        return out

    async def run(self, command: builtins.list[str], **kwargs: Any) -> Job:
        job = await self.submit(command=command, **kwargs)
        job = await self.wait(job.id)
        if job.state is not JobState.COMPLETE:
            raise JobFailed(job)
        return job
