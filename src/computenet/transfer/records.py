"""The manifests a data server has committed: one record per path a put landed on, under
``<root>/.cnet/manifests``, named by a hash of the path.

A record starts with the path it stands for, so the records at and below a removed path
are found by reading each one's first bytes, not its whole manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from pathlib import Path

import blake3

from computenet.model.transfer import Manifest
from computenet.transfer.paths import RESERVED, within

HEAD = 1 << 16  # room for a path of 4096 characters, each escaped
_PATH = re.compile(rb'\{"path":("(?:[^"\\]|\\.)*")')


def folder(root: Path) -> Path:
    return root / RESERVED / "manifests"


def location(root: Path, path: str) -> Path:
    return folder(root) / f"{blake3.blake3(path.encode()).hexdigest()[:32]}.json"


def write(root: Path, path: str, m: Manifest) -> None:
    """The manifest, committed after the files it names: written whole, then renamed."""
    final = location(root, path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.stem}.{secrets.token_hex(4)}.tmp")
    head = json.dumps({"path": "/" + path, "at": time.time()}, separators=(",", ":"))
    tmp.write_bytes(head[:-1].encode() + b"," + m.model_dump_json().encode()[1:])
    os.replace(tmp, final)


def manifest_of(root: Path, path: str) -> Manifest | None:
    """The manifest of the last put that landed on ``path``, or None where no put did."""
    try:
        body = json.loads(location(root, path).read_bytes())
    except FileNotFoundError:
        return None
    body.pop("path", None)
    body.pop("at", None)
    return Manifest.model_validate(body)


def recorded(head: bytes) -> str | None:
    """The pool path a record stands for (normalised, without the leading ``/``)."""
    found = _PATH.match(head)
    if found is None:
        return None
    path = json.loads(found.group(1))
    return path.lstrip("/") if isinstance(path, str) else None


def forget(root: Path, path: str) -> int:
    """Drops the records of ``path`` and of every path below it; how many."""
    dropped = 0
    try:
        entries = list(os.scandir(folder(root)))
    except FileNotFoundError:
        return 0
    for e in entries:
        if not e.name.endswith(".json"):
            continue
        try:
            with open(e.path, "rb") as fh:
                of = recorded(fh.read(HEAD))
        except FileNotFoundError:
            continue
        if of is not None and within(path, of):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
                dropped += 1
    return dropped
