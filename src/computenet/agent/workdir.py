"""The agent's own files in a job's working directory, which the job may write as well.

A job can leave a link where the agent will write (``result.json`` pointing at the node's
database) or read (``stdout`` pointing at the credentials, shipped as its log). So the
agent writes under a name nobody can guess, renamed into place (a rename replaces a
link, never follows it), and reads without following one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write(path: Path, text: str = "") -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, _NEW, 0o644)
    try:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def open_read(path: Path) -> int:
    """A descriptor of ``path``; ``OSError`` where it is missing or a link."""
    return os.open(path, _READ)


def read(path: Path) -> str:
    with os.fdopen(open_read(path), "rb") as f:
        return f.read().decode()


def belongs(workdir: Path, job_id: str, attempt: int) -> bool:
    """Whether what a working directory's files say is about its own attempt: a job can
    write them, and must not speak for another job."""
    return workdir.name == f"{job_id}.{attempt}"
