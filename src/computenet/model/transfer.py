"""Bulk data transfer: tickets the node signs, manifests the two ends agree on, results.

The node never carries the bytes. It checks who asks and for what, and signs a short-lived
ticket; the agent's data server checks the ticket on every connection. See
``docs/transfer.md`` for the wire format.
"""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Annotated

from pydantic import Field, model_validator

from computenet.ident.cpi import CPIStr
from computenet.model.common import Model

MAX_TTL = 86400.0
MAX_ENTRIES = 1_000_000  # files and directories in one transfer
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Bytes of one name: 255 on every file system a data root is likely to be on, less the
# 15 that the files a copy keeps beside it while it moves add (".NAME.lock.cnetpart").
NAME_MAX = 240


def too_long(parts: list[str]) -> str | None:
    """Why one of the names is longer than a file system takes, or None: refused by name
    before anything is made, not as a write that fails halfway down the path."""
    for p in parts:
        n = len(p.encode(errors="surrogatepass")) if len(p) * 4 > NAME_MAX else 0
        if n > NAME_MAX:
            return (
                f"the name {p[:24]}… is {n} bytes; a name takes at most {NAME_MAX} (a copy's "
                "files kept beside it while it moves add up to 15 to it)"
            )
    return None


MAX_STREAMS = 64  # data connections of one transfer


PoolPath = Annotated[str, Field(max_length=4096, description="a path under the pool's data root")]


class Direction(StrEnum):
    put = "put"  # into the pool
    get = "get"  # out of the pool
    delete = "delete"  # removed from the pool


class SyncLevel(StrEnum):
    """When a file already at the destination is left as it is."""

    none = "none"  # always copied (a partial copy is still resumed)
    exists = "exists"
    size = "size"
    mtime = "mtime"  # same size and modification time
    checksum = "checksum"  # same content, chunk by chunk


class DataEndpoint(Model):
    """Where a pool's data server listens, as its agent advertises it at registration."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: bool = Field(default=False, description="whether clients should use TLS by default")
    fingerprint: Hex32 | None = Field(
        default=None, description="SHA-256 of the server's TLS certificate (DER), pinned"
    )


class TicketClaims(Model):
    id: Annotated[str, Field(pattern=r"^t-[0-9a-f]{16}$")]
    pool: CPIStr
    path: PoolPath = Field(description="normalised, relative: '' is the whole data root")
    direction: Direction
    max_bytes: Annotated[int, Field(ge=0)]
    expires_at: float
    tenant: str
    issuer: str = Field(description="the node code that signed it")
    home_quota: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="a put inside home/TENANT: what that home may hold in the pool",
    )
    endpoint: Annotated[str, Field(max_length=300)] | None = Field(
        default=None,
        description="HOST:PORT of the pool's data server: a pool-to-pool copy goes there only",
    )


class Ticket(Model):
    claims: TicketClaims
    signature: Annotated[str, Field(min_length=80, max_length=100)]


class TransferRequest(Model):
    pool: CPIStr
    path: PoolPath
    direction: Direction
    size: Annotated[int, Field(ge=0, description="bytes to put; refused over the limit")] = 0
    ttl: Annotated[float, Field(gt=0, le=MAX_TTL, description="seconds the ticket lasts")] = 600.0


class TransferGrant(Model):
    ticket: Ticket
    endpoint: DataEndpoint
    path: str = Field(description="the path as the ticket names it (normalised)")


class ManifestEntry(Model):
    path: Annotated[str, Field(max_length=4096, description="relative to the transfer's root")]
    size: Annotated[int, Field(ge=0)]
    mode: Annotated[int, Field(ge=0, le=0o7777)] = 0o644
    mtime_ns: Annotated[int, Field(ge=-(2**63) * 10**9, le=2**63 * 10**9 - 1)] = 0  # time_t
    chunks: list[Hex32] = Field(default_factory=list, description="BLAKE3 of each chunk")


def _one_place(files: set[str], dirs: list[str]) -> None:
    """Every name lands in one place: a directory named twice, a file and a directory
    of one name, or anything under a file would fail halfway through the commit. In
    the order that puts what lies under a name right after it, each name is compared
    with the one before only: linear in the manifest's length, however deep."""
    if "" in files and (len(files) > 1 or dirs):
        raise ValueError("files: a file with no name is the whole transfer, and alone in it")
    named = sorted(
        [*((d, False) for d in dirs), *((f, True) for f in files)],
        key=lambda x: x[0].replace("/", "\0"),
    )
    for (before, is_file), (name, _) in pairwise(named):
        if name == before:
            raise ValueError(f"dirs: {name!r} is named twice")
        if is_file and name.startswith(before + "/"):
            raise ValueError(f"{name!r} lies under {before!r}, which is a file")


class Manifest(Model):
    """What one transfer moves. A single file has one entry with path ''."""

    chunk_size: Annotated[int, Field(ge=4096, le=64 << 20)]
    files: list[ManifestEntry]
    dirs: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, description="empty directories too"
    )
    tree_hash: Hex32

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        """Sizes, quotas and tickets are checked against the sizes a manifest states, so
        its chunks must add up to them exactly: a chunk list longer than its file's size
        would let a sender write past every limit."""
        if len(self.files) + len(self.dirs) > MAX_ENTRIES:
            raise ValueError(f"files and dirs: more than {MAX_ENTRIES} entries")
        seen: set[str] = set()
        for i, f in enumerate(self.files):
            want = -(-f.size // self.chunk_size)
            if len(f.chunks) != want:
                raise ValueError(
                    f"files.{i}.chunks: {len(f.chunks)} chunks for {f.size} bytes "
                    f"in chunks of {self.chunk_size} (expected {want})"
                )
            if f.path in seen:
                raise ValueError(f"files.{i}.path: {f.path!r} is named twice")
            seen.add(f.path)
        named = [(f"files.{i}.path", f.path) for i, f in enumerate(self.files)]
        for where, name in [*named, *((f"dirs.{i}", d) for i, d in enumerate(self.dirs))]:
            if "\\" in name:  # a pool path reads it as a separator: a name would turn a path
                raise ValueError(f"{where}: {name!r} holds a backslash")
            if "\x00" in name:
                raise ValueError(f"{where}: a name may not hold NUL")
            if len(name) * 4 > NAME_MAX and (long := too_long(name.split("/"))) is not None:
                raise ValueError(f"{where}: {long}")
        _one_place(seen, self.dirs)
        return self

    @property
    def single(self) -> bool:
        """One file and nothing else: the transfer's path is that file itself."""
        return len(self.files) == 1 and not self.files[0].path and not self.dirs

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def total_chunks(self) -> int:
        return sum(len(f.chunks) for f in self.files)


class ManifestFrame(Model):
    """The MANIFEST frame: what a sender offers and, on a put, how the receiving end
    treats what it holds already."""

    manifest: Manifest
    sync: SyncLevel = SyncLevel.none
    verify: bool = True
    exact: bool = Field(
        default=False,
        description="the destination must hold nothing else (a dataset version's copy)",
    )
    left_out: int = Field(
        default=0,
        ge=0,
        description="links, special files and partial files the sender's tree holds: not sent",
    )
    sole: bool = Field(
        default=False,
        description="on a put: say in DONE whether the destination then holds anything "
        "besides this copy (asked for a dataset version's copy, recorded only where not)",
    )


class RelayFrame(Model):
    """The RELAY frame: the put ticket a pool-to-pool copy goes under, and how it goes."""

    grant: TransferGrant
    streams: Annotated[int, Field(ge=1, le=MAX_STREAMS)] | None = None
    sync: SyncLevel = SyncLevel.none
    verify: bool = True
    tls: bool | None = None
    compress: bool | None = None
    tree_hash: Hex32 | None = None
    exact: bool = False


class TransferCounters(Model):
    bytes: int = Field(default=0, description="payload bytes moved")
    bytes_skipped: int = Field(default=0, description="already at the destination")
    bytes_holes: int = Field(
        default=0, description="all-zero chunks of new files: left as holes, not sent"
    )
    files: int = Field(default=0, description="files written")
    files_skipped: int = 0
    chunks: int = Field(default=0, description="chunks moved (and verified)")
    chunks_present: int = Field(
        default=0, description="chunks already there: in a partial copy, or in the file replaced"
    )
    retries: int = Field(default=0, description="chunks sent again")
    faults: int = Field(default=0, description="chunks that failed verification or streams lost")
    compressed_chunks: int = Field(default=0, description="chunks that went zstd-compressed")
    wire_bytes: int = Field(default=0, description="chunk bytes on the wire, after compression")
    left_out: int = Field(
        default=0,
        description=(
            "links, pipes, sockets, devices and partial files (*.cnetpart) in the source "
            "tree: not copied"
        ),
    )


class TransferResult(Model):
    source: str
    destination: str
    direction: str
    streams: int
    seconds: float
    tree_hash: str
    total_bytes: int
    counters: TransferCounters
    replica_of: str | None = Field(
        default=None,
        description="the dataset version the copy was recorded as a copy of: kept from "
        "writes, and removed with the version",
    )
    merged: bool | None = Field(
        default=None,
        description="for a dataset version copied into a pool: whether the destination "
        "held other files or directories too; such a copy is not recorded as the version's",
    )

    @property
    def rate(self) -> float:
        """Bytes moved per second (zero when nothing moved)."""
        return self.counters.bytes / self.seconds if self.seconds > 0 else 0.0


LIST_PAGE = 1000
MAX_LIST_PAGE = 10_000


class EntryKind(StrEnum):
    file = "file"
    dir = "dir"
    link = "link"  # a symbolic link, shown and never followed
    other = "other"  # a socket, a device, a FIFO: never copied


class PoolEntry(Model):
    name: str
    kind: EntryKind
    size: int = Field(ge=0, description="bytes; for a directory, 0")
    mtime_ns: int
    mode: int = Field(ge=0, le=0o7777)


class ListQuery(Model):
    """Which page of a directory: names in byte order, the first ``limit`` after ``after``."""

    after: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIST_PAGE)] = LIST_PAGE


class PoolListing(Model):
    """One page of what a pool path holds: a directory's entries, or the file itself."""

    pool: CPIStr
    path: str = Field(description="the path listed, as the pool names it")
    kind: EntryKind = Field(description="what the path itself is")
    entries: list[PoolEntry]
    next: str | None = Field(
        default=None, description="pass as ``after`` for the next page; null on the last"
    )
    unnamed: int = Field(
        default=0, description="entries not shown: their names are not UTF-8, so no path names them"
    )


class Removal(Model):
    """What a removal took away from a pool."""

    pool: CPIStr
    path: str = Field(description="the path removed, as the pool names it")
    kind: EntryKind
    files: int = Field(ge=0, description="files and links removed")
    bytes: int = Field(ge=0, description="their bytes")


class LinkSample(Model):
    """What one fetch from another pool measured, as the fetching agent reports it: the
    node learns the links between its pools from the copies that cross them."""

    source: CPIStr = Field(description="the pool the bytes came from")
    bytes: Annotated[int, Field(ge=0, le=1 << 50, description="payload bytes moved")]
    seconds: Annotated[float, Field(ge=0.001, le=7 * 86400)]


class Link(Model):
    """A link between two pools, as the node has measured it."""

    source: CPIStr
    destination: CPIStr
    rate: float = Field(description="bytes a second, a moving average of the samples")
    samples: int
    updated_at: float
