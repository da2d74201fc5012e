"""Python functions on the network: a ``concurrent.futures.Executor`` and ``@function``.

    import computenet

    ex = computenet.Executor(resources={"cpus": 1}, workers=2)
    print(ex.submit(pow, 2, 10).result())          # 1024, computed on a pool
    print(list(ex.map(abs, [-1, -2, -3])))         # [1, 2, 3]

    @computenet.function(cpus=1)
    def mean(xs):
        xp = computenet.xp()
        return float(xp.mean(xp.asarray(xs)))

    mean.remote([1, 2, 3]).result()                 # 2.0
    list(mean.map([[1], [2, 4]]))                   # [1.0, 3.0]

The function and its arguments travel with cloudpickle. Calls are sent in batches by one
thread and results come back in batches to another, so many small calls cost a few round
trips. A payload over 1 MiB goes as a blob, by its hash, so there is no size cap. An
exception in the function is raised by ``result()`` as a ``RemoteError`` that carries the
remote traceback, with the original exception as its cause when it could be sent back.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import queue
import site
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _Executor
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

import cloudpickle
import httpx

from computenet.functions.wire import fetch_blob, runtime, upload_blob
from computenet.model.functions import INLINE_MAX, Call, Calls, Results, SessionCreate
from computenet.sdk import naming
from computenet.sdk.client import Client, check, unreachable

P = ParamSpec("P")
R = TypeVar("R")
SEND_BATCH = 1000
SEND_BYTES = 4 << 20  # of inline payloads in a request (each at most 4/3 of INLINE_MAX)
JSON = {"content-type": "application/json"}


class RemoteError(Exception):
    """The function raised on the pool; ``remote_traceback`` is what it printed there."""

    def __init__(self, message: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.args[0]}\n\nRemote traceback:\n{self.remote_traceback}"


class SessionError(RuntimeError):
    """The session cannot go on: a runtime mismatch with the pool, or the node lost it."""


class Executor(_Executor):
    def __init__(
        self,
        resources: dict[str, Any] | None = None,
        workers: int = 1,
        pool: str | None = None,
        regions: list[str] | None = None,
        url: str | None = None,
        token: str | None = None,
        _runtime: dict[str, str] | None = None,
    ) -> None:
        self._client = Client(url, token)
        if pool is not None and not pool.startswith("cpi:"):  # a name, as cnet resources shows
            try:
                found = self._client.discover(naming.query(pool), None, True, 10).items
                pool = naming.pool_cpi(pool, found)
            except BaseException:
                self._client.close()
                raise
        self._request = SessionCreate.model_validate(
            {
                "resources": resources or {},
                "workers": workers,
                "pool": pool,
                "regions": regions or [],
                "runtime": _runtime or runtime(),
            }
        )
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._futures: dict[int, Future[Any]] = {}
        self._outbox: queue.Queue[Call | None] = queue.Queue()
        self._session: str | None = None
        self._error: BaseException | None = None
        self._closed = False  # no new calls: shutdown began
        self._stopped = False  # the threads stop: every call is over, or abandoned
        self._threads: list[threading.Thread] = []

    @property
    def _http(self) -> httpx.Client:
        return self._client._http

    def _open(self) -> str:
        if self._session is None:
            try:
                r = self._http.post(
                    "/v1/functions/sessions", content=self._request.model_dump_json(), headers=JSON
                )
            except httpx.TransportError as e:  # as the Client says it: ApiError, status 0
                raise unreachable(self._client.url, e) from e
            check(r)
            self._session = str(r.json()["id"])
            self.jobs: list[str] = list(r.json()["jobs"])
            for target in (self._send_loop, self._receive_loop):
                t = threading.Thread(target=target, daemon=True, name=f"cnet-{target.__name__}")
                t.start()
                self._threads.append(t)
        return self._session

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        _by_value(fn)
        data = cloudpickle.dumps((fn, args, kwargs))
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
            if self._error is not None:
                raise self._error
            self._open()
            call_id = next(self._ids)
            future: Future[R] = Future()
            self._futures[call_id] = future
        if len(data) > INLINE_MAX:
            call = Call(id=call_id, blob=upload_blob(self._http, data))
        else:
            call = Call(id=call_id, payload=base64.b64encode(data).decode())
        self._outbox.put(call)
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[R]:
        futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

        def results() -> Iterator[R]:
            for f in futures:
                yield f.result(timeout)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._futures.values())
        if cancel_futures:
            for f in pending:
                f.cancel()
        elif wait:  # the threads go on sending and receiving until these are over
            for f in pending:
                with contextlib.suppress(BaseException):  # canceled: nothing to wait for
                    f.exception()
        self._stopped = True
        self._outbox.put(None)
        if self._session is not None:
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(f"/v1/functions/sessions/{self._session}")
        for f in pending:
            if not f.done():
                f.set_exception(SessionError("the executor was shut down"))
        self._client.close()

    # --- the two threads ------------------------------------------------------------------

    def _send_loop(self) -> None:
        held: Call | None = None  # taken from the outbox, but for the next request
        while True:
            first = self._outbox.get() if held is None else held
            if first is None:
                return
            batch, held = [first], None
            size = len(first.payload or "")
            while len(batch) < SEND_BATCH:
                try:
                    nxt = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._outbox.put(None)
                    break
                size += len(nxt.payload or "")
                if size > SEND_BYTES:  # the node takes 8 MiB a request
                    held = nxt
                    break
                batch.append(nxt)
            body, pause = Calls(calls=batch).model_dump_json(), 0.05
            try:
                while True:
                    r = self._http.post(
                        f"/v1/functions/sessions/{self._session}/calls", content=body, headers=JSON
                    )
                    if r.status_code != 429 or self._stopped or self._error is not None:
                        break
                    time.sleep(pause)  # 429: the node holds all it will; the workers take some
                    pause = min(2.0, pause * 2)
                check(r)
            except Exception as e:
                self._fail(SessionError(f"sending calls failed: {e}"))
                return

    def _receive_loop(self) -> None:
        while not self._stopped:
            try:
                r = self._http.get(
                    f"/v1/functions/sessions/{self._session}/results",
                    params={"wait": 5},
                    timeout=30,
                )
                if self._stopped:
                    return
                check(r)
            except Exception as e:
                if not self._stopped:
                    self._fail(SessionError(f"the node lost the session: {e}"))
                return
            got = Results.model_validate_json(r.content)
            for res in got.results:
                with self._lock:
                    future = self._futures.pop(res.id, None)
                if future is None or future.done():
                    continue
                try:
                    raw = fetch_blob(self._http, res.blob) if res.blob else b""
                    value = cloudpickle.loads(raw or base64.b64decode(res.payload or ""))
                except Exception as e:  # a result that cannot load here
                    value, res.ok = e, False
                    res.error = res.error or f"{type(e).__name__}: {e}"
                if res.ok:
                    future.set_result(value)
                else:
                    err = RemoteError(_last_line(res.error) or repr(value), res.error)
                    if isinstance(value, BaseException):
                        err.__cause__ = value
                    future.set_exception(err)
            if got.error:
                self._fail(SessionError(got.error))
                return

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._error = error
            pending = list(self._futures.values())
            self._futures.clear()
        for f in pending:
            if not f.done():
                f.set_exception(error)


_SHIPPED: set[str] = set()
_INSTALLED = tuple(
    str(Path(p).resolve())
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
)


def _by_value(fn: Callable[..., Any]) -> None:
    """The user's own modules (a script, a test, a local package) are not installed on the
    pool: their functions travel by value. Installed packages travel by reference."""
    name = getattr(fn, "__module__", None)
    if not name or name in _SHIPPED or name == "__main__":
        return
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None)
    if mod is None or path is None:
        return
    if not str(Path(path).resolve()).startswith(_INSTALLED):
        cloudpickle.register_pickle_by_value(mod)
    _SHIPPED.add(name)


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


class RemoteFunction(Generic[P, R]):
    """A function that also runs on the network: ``f.remote(...)`` and ``f.map(...)``;
    calling it plainly still runs it here."""

    def __init__(self, fn: Callable[P, R], options: dict[str, Any]) -> None:
        self.fn, self.options = fn, options
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self.__doc__, self.__name__ = fn.__doc__, getattr(fn, "__name__", "function")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def executor(self) -> Executor:
        with self._lock:
            if self._executor is None:
                self._executor = Executor(**self.options)
            return self._executor

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        return self.executor.submit(self.fn, *args, **kwargs)

    def map(self, *iterables: Iterable[Any]) -> Iterator[R]:
        return self.executor.map(self.fn, *iterables)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


def function(
    *,
    cpus: float = 1.0,
    memory: int | str = 0,
    gpus: int = 0,
    accelerator: str | None = None,
    workers: int = 1,
    pool: str | None = None,
    url: str | None = None,
    token: str | None = None,
) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]:
    resources: dict[str, Any] = {"cpus": cpus, "memory": memory, "gpus": gpus}
    if accelerator:
        resources["accelerator"] = accelerator
    options = {"resources": resources, "workers": workers, "pool": pool, "url": url, "token": token}
    return lambda fn: RemoteFunction(fn, options)
