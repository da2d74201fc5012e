"""What clients and workers share: the runtime they must agree on, and blob transfer."""

from __future__ import annotations

import platform

import cloudpickle
import httpx

HEADER_TOKEN = "X-CNet-Session-Token"
CHUNK = 1 << 20


def runtime() -> dict[str, str]:
    """What must match for cloudpickle's bytes to load on the other side."""
    major, minor, _ = platform.python_version_tuple()
    return {"python": f"{major}.{minor}", "cloudpickle": cloudpickle.__version__}


def pool_runtime() -> dict[str, str]:
    """What a pool records at registration: the Python its function workers run, and the
    versions of the packages a function is most likely to need."""
    import numpy

    return {**runtime(), "numpy": numpy.__version__}


def upload_blob(c: httpx.Client, data: bytes) -> str:
    view = memoryview(data)
    body = (bytes(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK))
    r = c.put("/v1/blobs", content=body, headers={"content-type": "application/octet-stream"})
    r.raise_for_status()
    return str(r.json()["id"])


def fetch_blob(c: httpx.Client, blob: str) -> bytes:
    r = c.get(f"/v1/blobs/{blob}")
    r.raise_for_status()
    return r.content
