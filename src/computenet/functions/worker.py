"""A warm worker: takes the calls of one function session from the node, runs them and
hands the results back, until the session closes. The node starts it as a job with the
session's resources (``python -m computenet.functions.worker``), so it pays the
interpreter's start once, not once a call."""

from __future__ import annotations

import base64
import logging
import os
import socket
import sys
import traceback
from typing import Any

import cloudpickle
import httpx

from computenet.functions.wire import HEADER_TOKEN, fetch_blob, runtime, upload_blob
from computenet.model.common import as_text
from computenet.model.functions import INLINE_MAX, Call, Calls, Result, Results

PART_BYTES = 4 << 20
BATCH = 32  # calls taken at once: enough to amortise the round trip, few enough to share


def main() -> int:
    url, sid = os.environ["CNET_NODE_URL"], os.environ["CNET_FN_SESSION"]
    headers = {
        HEADER_TOKEN: os.environ["CNET_FN_TOKEN"],
        "X-CNet-Session": sid,
        "X-CNet-Worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    base = f"/v1/functions/sessions/{sid}"
    ray = _ray()
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
        r = c.post(f"{base}/hello", json={"runtime": runtime()})
        if r.status_code == 404:
            return 0
        r.raise_for_status()
        if r.json().get("error"):
            print(r.json()["error"], file=sys.stderr)
            return 3
        while True:
            r = c.get(f"{base}/calls", params={"wait": 20, "most": BATCH})
            if r.status_code == 404:
                return 0  # the session is over
            r.raise_for_status()
            calls = Calls.model_validate_json(r.content).calls
            if not calls:
                continue
            done = on_ray(c, calls) if ray else [run(c, call) for call in calls]
            for part in _parts(done):  # the node takes 8 MiB a request
                r = c.post(
                    f"{base}/results",
                    content=Results(results=part).model_dump_json(),
                    headers={"content-type": "application/json"},
                )
                if r.status_code == 404:
                    return 0
                r.raise_for_status()  # a result the node refused would be waited on for ever


def _parts(results: list[Result]) -> list[list[Result]]:
    """``results`` in requests of at most ``PART_BYTES`` of inline payload, one at least."""
    parts: list[list[Result]] = [[]]
    size = 0
    for res in results:
        n = len(res.payload or "") + len(res.error)
        if parts[-1] and size + n > PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(res)
        size += n
    return parts


def run(c: httpx.Client, call: Call) -> Result:
    raw = fetch_blob(c, call.blob) if call.blob else base64.b64decode(call.payload or "")
    return _result(c, call.id, *_call(raw))


def _result(c: httpx.Client, call_id: int, ok: bool, data: bytes, error: str) -> Result:
    if len(data) > INLINE_MAX:
        return Result(id=call_id, ok=ok, blob=upload_blob(c, data), error=error)
    return Result(id=call_id, ok=ok, payload=base64.b64encode(data).decode(), error=error)


def _ray() -> Any:
    """On a Ray pool the worker is a Ray job's entrypoint (Ray sets ``RAY_ADDRESS``): its
    calls then run as Ray tasks, spread over the cluster by Ray's scheduler."""
    if not os.environ.get("RAY_ADDRESS"):
        return None
    try:
        import ray
    except ImportError:
        return None
    ray.init(logging_level=logging.ERROR)
    return ray


def on_ray(c: httpx.Client, calls: list[Call]) -> list[Result]:
    import ray

    task = ray.remote(num_cpus=float(os.environ.get("CNET_CPUS", "1")))(_call)
    raws = [fetch_blob(c, x.blob) if x.blob else base64.b64decode(x.payload or "") for x in calls]
    done = ray.get([task.remote(raw) for raw in raws])
    return [_result(c, call.id, *d) for call, d in zip(calls, done, strict=True)]


def _call(raw: bytes) -> tuple[bool, bytes, str]:
    """One call, wherever it runs (here or in a Ray task): the result or the exception,
    pickled, and the traceback."""
    try:
        fn, args, kwargs = cloudpickle.loads(raw)
        return True, cloudpickle.dumps(fn(*args, **kwargs)), ""
    except BaseException as e:
        text = as_text("".join(traceback.format_exception(e))[-65_000:])
        try:
            return False, cloudpickle.dumps(e), text
        except Exception:
            return False, cloudpickle.dumps(None), text


if __name__ == "__main__":
    sys.exit(main())
