"""Python functions on a pool through the Executor and @function: results, remote
tracebacks, 200 MB each way, many small calls, and a runtime mismatch that fails fast."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

import computenet
from computenet.functions.executor import SessionError
from computenet.model import JobState
from computenet.sdk import ApiError
from conftest import Network

pytestmark = pytest.mark.slow


def norm(values: list[float]) -> float:
    """An array-API computation: the same body runs on NumPy here and CuPy/torch on GPUs."""
    xp = computenet.xp()
    a = xp.asarray(values, dtype=xp.float64)
    return float(xp.sqrt(xp.sum(a * a)))


def divide(a: float, b: float) -> float:
    return a / b


def size_of(blob: bytes) -> int:
    return len(blob)


def make(n: int) -> bytes:
    return b"x" * n


@pytest.fixture(scope="module")
def ex(shared: Network) -> Iterator[computenet.Executor]:
    e = computenet.Executor(resources={"cpus": 0.5}, workers=2, url=shared.url, token=shared.token)
    yield e
    e.shutdown()


def test_a_function_runs_on_the_pool_and_returns(ex: computenet.Executor) -> None:
    assert ex.submit(norm, [3.0, 4.0]).result(timeout=120) == 5.0
    assert list(ex.map(divide, [1, 9, 8], [2, 3, 4], timeout=60)) == [0.5, 3.0, 2.0]


def test_an_exception_comes_back_with_its_remote_traceback(ex: computenet.Executor) -> None:
    with pytest.raises(computenet.RemoteError) as e:
        ex.submit(divide, 1, 0).result(timeout=60)
    assert "ZeroDivisionError" in str(e.value)
    assert "in divide" in e.value.remote_traceback  # the frame, as it ran on the pool
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_200_mb_each_way(ex: computenet.Executor) -> None:
    big = b"\x01" * (200 * 1024 * 1024)
    assert ex.submit(size_of, big).result(timeout=300) == len(big)
    back = ex.submit(make, 200 * 1024 * 1024).result(timeout=300)
    assert len(back) == 200 * 1024 * 1024 and back[:1] == b"x"


def test_many_small_calls_through_map(ex: computenet.Executor) -> None:
    assert list(ex.map(abs, range(-2000, 0), timeout=120)) == list(range(2000, 0, -1))


def test_decorated_function_remote_and_map(shared: Network) -> None:
    @computenet.function(cpus=0.5, url=shared.url, token=shared.token)
    def square(x: int) -> int:
        return x * x

    try:
        assert square(3) == 9  # plainly: here
        assert square.remote(4).result(timeout=120) == 16
        assert list(square.map([1, 2, 3])) == [1, 4, 9]
    finally:
        square.shutdown()


def test_runtime_mismatch_fails_fast_and_says_what_differs(shared: Network) -> None:
    ex = computenet.Executor(
        resources={"cpus": 0.5},
        url=shared.url,
        token=shared.token,
        _runtime={"python": "2.7", "cloudpickle": "0.1"},
    )
    try:
        with pytest.raises(SessionError) as e:
            ex.submit(abs, -1).result(timeout=120)
        assert "python: client 2.7, pool 3." in str(e.value)
    finally:
        ex.shutdown()


def test_a_session_nobody_can_run_is_refused(shared: Network) -> None:
    ex = computenet.Executor(resources={"cpus": 4096}, url=shared.url, token=shared.token)
    with pytest.raises(computenet.sdk.ApiError) as e:
        ex.submit(abs, -1)
    assert e.value.status == 409
    assert e.value.problem.errors[0].field == "resources"
    ex.shutdown()


def test_a_pinned_session_is_checked_against_the_pools_recorded_runtime(shared: Network) -> None:
    with shared.client() as c:
        pool = next(p for p in c.pools() if p.name == "alpha")
    assert pool.runtime["python"].startswith("3.") and "cloudpickle" in pool.runtime
    ex = computenet.Executor(
        pool=pool.cpi, url=shared.url, token=shared.token, _runtime={"python": "2.7"}
    )
    with pytest.raises(computenet.sdk.ApiError) as e:
        ex.submit(abs, -1)
    assert e.value.status == 409 and "runtime mismatch" in str(e.value)
    ex.shutdown()


def test_calls_beyond_the_nodes_room_wait_for_the_workers(shared: Network) -> None:
    """A session holds so much of its calls for its workers, and then answers 429 naming
    ``calls``, so that a client sending faster than the workers take cannot fill the node's
    memory; the Executor sends again once there is room."""
    headers = {"authorization": f"Bearer {shared.token}"}
    with httpx.Client(base_url=shared.url, headers=headers, timeout=60) as c:
        made = c.post("/v1/functions/sessions", json={"resources": {"cpus": 0.5}})
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        try:
            for job in made.json()["jobs"]:  # no worker takes anything from here on
                assert c.post(f"/v1/jobs/{job}/cancel").status_code == 200
            payload = "A" * (2 << 20)  # the most one call inlines
            answers = [
                c.post(
                    f"/v1/functions/sessions/{sid}/calls",
                    json={"calls": [{"id": 3 * i + k, "payload": payload} for k in range(3)]},
                )
                for i in range(11)
            ]
        finally:
            c.delete(f"/v1/functions/sessions/{sid}")
    assert [r.status_code for r in answers[:10]] == [202] * 10
    refused = answers[10]
    assert refused.status_code == 429, refused.text[:300]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"][0]["field"] == "calls"
    assert "send these once they have taken some" in refused.json()["detail"]


def test_a_map_of_megabyte_arguments_goes_through(ex: computenet.Executor) -> None:
    """Ninety calls of nearly 1 MiB each, inline: more than one request can carry, and more
    than the node holds for the workers at once; every one comes back."""
    sizes = [(900 << 10) + i for i in range(90)]
    assert list(ex.map(size_of, (b"x" * n for n in sizes))) == sizes


def test_a_map_of_megabyte_results_comes_back(ex: computenet.Executor) -> None:
    """A worker sent the results of a batch of calls in one request: 32 results of nearly
    1 MiB each were past the node's 8 MiB, refused, and waited on for ever."""
    sizes = [(900 << 10) + i for i in range(40)]
    assert [len(b) for b in ex.map(make, sizes)] == sizes


def test_leaving_an_executor_waits_for_its_calls(shared: Network) -> None:
    """``with Executor() as e`` ends with shutdown(wait=True): its calls still finish (the
    threads that receive results stopped as soon as shutdown began)."""
    with computenet.Executor(resources={"cpus": 0.5}, url=shared.url, token=shared.token) as e:
        futures = [e.submit(divide, i, 2) for i in range(20)]
    assert [f.result(timeout=0) for f in futures] == [i / 2 for i in range(20)]


@pytest.mark.heavy  # restarts its node, and waits for a client to be given up on
def test_workers_stop_when_their_client_goes_without_shutting_down(network: Network) -> None:
    """A script that exits without ``shutdown`` (or a killed notebook) left its workers
    running, each holding its CPUs, with no end."""
    network.overrides["CNET_FN_CLIENT_GONE"] = "10"
    network.stop()
    network.start_node()
    network.start_agent("alpha")
    script = (
        "import os, computenet\n"
        "ex = computenet.Executor(resources={'cpus': 0.5}, workers=1)\n"
        "print(ex.submit(abs, -5).result(), ex.jobs[0], flush=True)\n"
        "os._exit(0)\n"
    )
    env = dict(network.env, CNET_TOKEN=network.token)
    ran = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    value, worker = ran.stdout.split()
    assert value == "5"
    with network.client() as c:
        deadline = time.monotonic() + 60
        while c.get(worker).state is not JobState.CANCELED and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.get(worker).state is JobState.CANCELED


def test_an_executor_takes_a_pool_by_its_name(shared: Network) -> None:
    """Before, a name was a pydantic error: 'a CPI starts with cpi:'."""
    with computenet.Executor(
        resources={"cpus": 0.5}, pool="alpha", url=shared.url, token=shared.token
    ) as e:
        assert e.submit(abs, -3).result(timeout=120) == 3
    with pytest.raises(ValueError, match="pool 'nosuch': no pool is named so"):
        computenet.Executor(pool="nosuch", url=shared.url, token=shared.token)


def test_an_executor_that_cannot_reach_its_node_says_so_as_the_client_does() -> None:
    """It raised httpx.ConnectError; the docs promise ApiError with status 0."""
    from conftest import free_port

    ex = computenet.Executor(url=f"http://127.0.0.1:{free_port()}", token="cnet_x.y")
    with pytest.raises(ApiError) as e:
        ex.submit(abs, -1)
    assert e.value.status == 0 and "cannot reach" in str(e.value)
