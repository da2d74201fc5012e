"""Datasets and job data: named, versioned trees that pools hold copies of, by tree hash.

A dataset version is immutable: its tree hash (the transfer manifest's, see
``docs/transfer.md``) says what it holds, so any copy that shows the same hash is the same
data. The node records which pools hold a copy and where; the scheduler prefers those
pools, and agents stage a job's inputs from them.

Data URIs, the one grammar for the CLI, job files, REST and the SDK:

- ``cnet://dataset/NAME`` (the newest version) or ``cnet://dataset/NAME@VERSION``, and
  where data is read (``cnet cp``, ``cnet ls``, a job's inputs) a path inside the version
  after it, ``cnet://dataset/NAME@VERSION/some/file``;
- ``POOL-CPI:/path``, a path under a pool's data root (``cpi:local:acme/gpu:/in/x``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from computenet.ident.cpi import CPIError, CPIStr, parse
from computenet.model.common import Model
from computenet.model.transfer import Hex32, LinkSample, Removal, TransferGrant

SCHEME = "cnet://dataset/"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
MAX_DATA = 64  # inputs, and outputs, per job
RESERVED_NAMES = frozenset(
    {"stdout", "stderr", "tmp", "assignment.json", "result.json", "reported"}
)


class DataURIError(ValueError):
    """A data URI that names nothing: the message shows the grammar."""


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: str | None  # None: the newest

    def __str__(self) -> str:
        return SCHEME + self.name + (f"@{self.version}" if self.version else "")


@dataclass(frozen=True)
class PoolRef:
    pool: str
    path: str

    def __str__(self) -> str:
        return f"{self.pool}:{self.path}"


def parse_dataset(text: str) -> DatasetRef:
    if not text.startswith(SCHEME):
        raise DataURIError(f"{text!r}: a dataset is cnet://dataset/NAME[@VERSION]")
    head, slash, _ = text[len(SCHEME) :].partition("/")
    name, at, version = head.partition("@")
    if not NAME_RE.match(name):
        raise DataURIError(
            f"{text!r}: a dataset name is 1 to 63 of a-z 0-9 . _ -, starting with a letter or digit"
        )
    if slash:
        raise DataURIError(
            f"{text!r}: a path inside a dataset is only read (by cnet ls, cnet cp and a "
            "job's inputs); here name the dataset, cnet://dataset/NAME[@VERSION]"
        )
    if at and not VERSION_RE.match(version):
        raise DataURIError(
            f"{text!r}: a version is 1 to 64 of A-Z a-z 0-9 . _ + -, starting with a letter "
            "or digit"
        )
    return DatasetRef(name, version if at else None)


def parse_pool_path(text: str) -> PoolRef:
    """``cpi:AUTHORITY:PROVIDER/POOL:/path``: the CPI ends at the third colon."""
    authority, _, rest = text[4:].partition(":")
    cpi_path, sep, path = rest.partition(":")
    cpi = f"cpi:{authority}:{cpi_path}"
    try:
        parsed = parse(cpi)
    except CPIError as e:
        raise DataURIError(f"{text}: {e}") from e
    if not sep or parsed.kind != "pool":
        raise DataURIError(f"{text}: a pool path is POOL-CPI:/path, e.g. cpi:local:acme/gpu:/in")
    return PoolRef(cpi, path or "/")


def split_input(text: str) -> tuple[str, str]:
    """A job input's data URI without the path inside a dataset version it may name, and
    that path ('' for the whole version): ``cnet://dataset/NAME[@VERSION][/PATH]``. The
    version is staged whole (and kept in the pool for later jobs); the path is linked."""
    if not text.startswith(SCHEME):
        return text, ""
    head, _, inside = text[len(SCHEME) :].partition("/")
    _no_dotdot(inside)
    return SCHEME + head, "/".join(p for p in inside.split("/") if p not in ("", "."))


def parse_data_uri(text: str) -> DatasetRef | PoolRef:
    if text.startswith("cnet://"):
        return parse_dataset(text)
    if text.startswith("cpi:"):
        return parse_pool_path(text)
    raise DataURIError(f"{text!r}: data is named cnet://dataset/NAME[@VERSION] or POOL-CPI:/path")


def _uri(v: str) -> str:
    ref = parse_data_uri(v)
    if isinstance(ref, PoolRef):
        _no_dotdot(ref.path)
    return v


def _input_uri(v: str) -> str:
    uri, inside = split_input(v)
    _uri(uri)
    return f"{uri}/{inside}" if inside else uri


def _no_dotdot(path: str) -> None:
    if "\x00" in path or ".." in path.replace("\\", "/").split("/"):
        raise ValueError(f"{path!r}: '..' is not allowed, nor NUL")


def _workdir_path(v: str) -> str:
    """Inside the job's working directory, and clear of the files the agent keeps there."""
    _no_dotdot(v)
    if v.startswith("/") or v.startswith("\\"):
        raise ValueError(f"{v!r}: a path in the working directory is relative")
    parts = [p for p in v.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError("a path in the working directory must name something")
    if parts[0] in RESERVED_NAMES:
        raise ValueError(f"{v!r}: {parts[0]} is the agent's own, in the working directory")
    return "/".join(parts)


DataURI = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_uri)]
InputURI = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_input_uri)]
WorkdirPath = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_workdir_path)]
DatasetName = Annotated[str, Field(pattern=NAME_RE.pattern)]
DatasetVersionText = Annotated[str, Field(pattern=VERSION_RE.pattern)]


def some_versions(versions: list[str], at_most: int = 5) -> str:
    """The first few of a dataset's versions, for an error that names a missing one."""
    return ", ".join(versions[:at_most]) + (", …" if len(versions) > at_most else "")


class DataInput(Model):
    uri: InputURI = Field(
        description="cnet://dataset/NAME[@VERSION][/PATH] (PATH: a file or directory inside "
        "the version) or POOL-CPI:/path"
    )
    path: WorkdirPath = Field(description="where it appears, relative to the working directory")


class DataOutput(Model):
    path: WorkdirPath = Field(description="what to keep, relative to the working directory")
    uri: DataURI = Field(
        description="where it goes: cnet://dataset/NAME[@VERSION] publishes a dataset version "
        "(without a version, the next number), POOL-CPI:/path copies it to a pool"
    )


class Replica(Model):
    pool: CPIStr
    path: str = Field(description="under the pool's data root")
    added_at: datetime


class DatasetVersion(Model):
    name: str
    version: str
    tenant: str = Field(description="who published it; only they add versions of the name")
    tree_hash: Hex32
    total_bytes: int
    files: int
    created_at: datetime
    replicas: list[Replica] = Field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}@{self.version}"


class Dataset(Model):
    name: str
    versions: list[DatasetVersion] = Field(description="newest first")
    removed: list[str] = Field(
        default_factory=list,
        description="versions removed (numbered ones first, highest first): never used again",
    )


class DatasetPage(Model):
    """Every version of up to ``limit`` datasets, by name."""

    items: list[DatasetVersion]
    next: str | None = Field(default=None, description="the name to ask after for the next page")


class DatasetPublish(Model):
    """A tree already in a pool, registered as a version of a dataset.

    The tree hash comes from the copy that put it there (the data server checked every
    chunk against it); every later copy out of the pool is checked against it again.
    """

    name: DatasetName
    version: DatasetVersionText | None = Field(
        default=None, description="default: one more than the newest numbered version"
    )
    pool: CPIStr
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    tree_hash: Hex32
    total_bytes: Annotated[int, Field(ge=0, le=1 << 50)]
    files: Annotated[int, Field(ge=0, le=100_000_000)]


class DatasetRemoval(Model):
    """A version the node has forgotten, and what became of its copies' data."""

    version: DatasetVersion
    removed: list[Removal] = Field(default_factory=list)
    left: list[str] = Field(
        default_factory=list, description="copies whose data stays, each with the reason"
    )
    gone: list[str] = Field(
        default_factory=list,
        description="copies no longer at the path recorded (POOL:/path): nothing to remove",
    )


def unrecordable(path: str) -> str | None:
    """Why a version's copy may not be recorded at the pool path ``path``, or None. A
    recorded copy is kept from writes and removed with its version: never a pool's
    root, ``/home`` or ``/datasets``, nor a tenant's home itself, which nothing could
    then be written into."""
    parts = path.strip("/").split("/")
    if parts == [""]:
        return "a dataset's copy is a file or directory under the data root"
    if parts in (["home"], ["datasets"]) or (len(parts) == 2 and parts[0] == "home"):
        return f"/{'/'.join(parts)} holds every copy of its kind: a copy lies below it"
    return None


class ReplicaAdd(Model):
    """A copy of a version that landed in another pool; refused unless the hash matches."""

    pool: CPIStr
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    tree_hash: Hex32


class StagingAsk(Model):
    """An agent asking where one of its job's inputs is, or where an output goes."""

    job_id: Annotated[str, Field(pattern=r"^j-[0-9a-z]{1,40}$")]
    attempt: Annotated[int, Field(ge=1)]
    kind: Literal["input", "output"]
    index: Annotated[int, Field(ge=0, lt=MAX_DATA)]
    size: Annotated[int, Field(ge=0, description="bytes of an output to copy out")] = 0
    spoiled: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None,
        description="this pool's copy of the input, found changed: forget it, fetch another",
    )


class StagingPlan(Model):
    """Where the agent finds an input, or puts an output: a path in its own data root
    (``local``), or another pool's data server with a ticket (``grant``)."""

    uri: str
    local: str | None = None
    grant: TransferGrant | None = None
    tree_hash: Hex32 | None = Field(default=None, description="what a dataset input must hash to")
    total_bytes: int | None = None
    keep: str | None = Field(
        default=None, description="for a dataset fetched from elsewhere: where this pool keeps it"
    )
    discard: str | None = Field(
        default=None,
        description="a spoiled copy under /datasets/ to remove once the new one is in place",
    )
    home: str | None = Field(
        default=None, description="for an output into its tenant's home: that home"
    )
    home_quota: int | None = Field(default=None, description="what ``home`` may hold")


class CopiesAsk(Model):
    """A data server's question before a put: which dataset copies lie at, above or
    below this path of its pool."""

    path: Annotated[str, Field(max_length=4096)]


class PoolCopies(Model):
    copies: list[str] = Field(description="normalised paths of dataset copies in the pool")


class StagingLanded(Model):
    """A tree now in the agent's data root: a replica of an input, or a job's output."""

    job_id: Annotated[str, Field(pattern=r"^j-[0-9a-z]{1,40}$")]
    attempt: Annotated[int, Field(ge=1)]
    kind: Literal["input", "output"]
    index: Annotated[int, Field(ge=0, lt=MAX_DATA)]
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    tree_hash: Hex32
    total_bytes: Annotated[int, Field(ge=0)]
    files: Annotated[int, Field(ge=0)]
    moved: LinkSample | None = Field(
        default=None, description="an input fetched from another pool: what the fetch measured"
    )
