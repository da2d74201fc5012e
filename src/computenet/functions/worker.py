"""A warm worker: takes the calls of one function session from the node, runs them and
hands the results back, until the session closes. The node starts it as a job with the
session's resources (``python -m computenet.functions.worker``), so it pays the
interpreter's start once, not once a call."""

from __future__ import annotations

import base64
import os
import socket
import sys
import traceback
from typing import Any

import cloudpickle
import httpx

from computenet.functions.wire import HEADER_TOKEN, fetch_blob, runtime, upload_blob
from computenet.model.functions import INLINE_MAX, Call, Calls, Result, Results

BATCH = 32  # calls taken at once: enough to amortise the round trip, few enough to share


def main() -> int:
    url, sid = os.environ["CNET_NODE_URL"], os.environ["CNET_FN_SESSION"]
    headers = {
        HEADER_TOKEN: os.environ["CNET_FN_TOKEN"],
        "X-CNet-Session": sid,
        "X-CNet-Worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    base = f"/v1/functions/sessions/{sid}"
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
            done = Results(results=[run(c, call) for call in calls])
            r = c.post(
                f"{base}/results",
                content=done.model_dump_json(),
                headers={"content-type": "application/json"},
            )
            if r.status_code == 404:
                return 0


def run(c: httpx.Client, call: Call) -> Result:
    try:
        raw = fetch_blob(c, call.blob) if call.blob else base64.b64decode(call.payload or "")
        fn, args, kwargs = cloudpickle.loads(raw)
        value = fn(*args, **kwargs)
        return _pack(c, call.id, True, value, "")
    except BaseException as e:  # everything goes back to the caller, with its traceback
        text = "".join(traceback.format_exception(e))
        try:
            return _pack(c, call.id, False, e, text)
        except Exception:
            return Result(id=call.id, ok=False, error=text[-65_000:])


def _pack(c: httpx.Client, call_id: int, ok: bool, value: Any, error: str) -> Result:
    data = cloudpickle.dumps(value)
    if len(data) > INLINE_MAX:
        return Result(id=call_id, ok=ok, blob=upload_blob(c, data), error=error[-65_000:])
    return Result(id=call_id, ok=ok, payload=base64.b64encode(data).decode(), error=error[-65_000:])


if __name__ == "__main__":
    sys.exit(main())
