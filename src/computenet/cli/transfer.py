"""``cnet cp``: files and trees between this machine, pools and datasets, either way;
``cnet ls`` and ``cnet rm``: what a pool path or a dataset holds, and removing it;
``cnet dataset``: what datasets there are, and where their copies are."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from computenet.cli.output import CLIError, ago, err, out, printable
from computenet.cli.session import client, pool_cpi
from computenet.model import SyncLevel, parse_duration
from computenet.model.common import format_bytes


class _Bar:
    """A Rich bar with rate and ETA; told the total once, then each verified chunk."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("copying", total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


def _many(n: int, what: str, plural: str = "") -> str:
    return f"{n} {what if n == 1 else plural or what + 's'}"


def cp(
    src: Annotated[
        str, typer.Argument(help="a local path, POOL-CPI:/path or cnet://dataset/NAME[@VERSION]")
    ],
    dst: Annotated[
        str, typer.Argument(help="a local path, POOL-CPI:/path or cnet://dataset/NAME[@VERSION]")
    ],
    pool: Annotated[
        str | None,
        typer.Option(
            help="the pool (name or CPI) a new dataset version goes to (default: the first online)"
        ),
    ] = None,
    streams: Annotated[
        int | None, typer.Option(min=1, max=64, help="parallel streams (default: by size)")
    ] = None,
    sync: Annotated[
        SyncLevel, typer.Option(help="leave a file at the destination that matches by this")
    ] = SyncLevel.none,
    verify: Annotated[
        bool, typer.Option(help="check every chunk's BLAKE3 hash as it lands")
    ] = True,
    deadline: Annotated[
        str | None, typer.Option(help="give up after this long, e.g. 10m (resume later)")
    ] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="encrypt data streams")] = None,
    compress: Annotated[
        bool | None,
        typer.Option(
            "--compress/--no-compress",
            help="zstd the chunks (default: when a sample of the files shrinks by a fifth)",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Copy a file or a directory between this machine, pools and datasets; run it again
    after an interruption and only what is missing moves."""
    from computenet.transfer.wire import TransferError

    try:
        seconds = float(parse_duration(deadline)) if deadline is not None else None
    except ValueError as e:
        raise CLIError(f"--deadline: {e}", 2) from e
    if seconds is not None and seconds <= 0:
        raise CLIError(f"--deadline: {deadline!r} is no time at all: give one above 0, e.g. 10m", 2)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    hidden = quiet or as_json or not err.is_terminal  # a bar is for a person watching
    into = pool_cpi(pool)
    with client() as c, Progress(*columns, console=err, disable=hidden, transient=True) as bar:
        try:
            r = c.copy(
                src,
                dst,
                pool=into,
                streams=streams,
                sync=sync,
                verify=verify,
                deadline=seconds,
                tls=tls,
                compress=compress,
                watcher=_Bar(bar),
            )
        except TransferError as e:
            raise CLIError(str(e)) from e
        except OSError as e:
            raise CLIError(f"{e.filename or src}: {e.strerror or e}") from e
        except KeyboardInterrupt:
            raise CLIError(
                "interrupted: what arrived is kept; run the same command again to resume", 130
            ) from None
    if as_json:
        print(r.model_dump_json(indent=2))
        return
    k = r.counters
    rate = f"{format_bytes(r.rate)}/s" if k.bytes else "-"
    files = k.files + k.files_skipped
    out.print(
        f"{printable(r.source)} -> {printable(r.destination)}: {_many(files, 'file')} "
        f"({k.files_skipped} unchanged), {format_bytes(k.bytes)} moved in {r.seconds:.2f}s "
        f"({rate}, {_many(r.streams, 'stream')}); {_many(k.chunks_present, 'chunk')} already there, "
        f"{_many(k.retries, 'retry', 'retries')}, {_many(k.faults, 'fault')}"
        + (f"; {format_bytes(k.bytes_holes)} of zeros left as holes" if k.bytes_holes else ""),
        markup=False,
        soft_wrap=True,  # one line however long the paths: a script reads it
    )
    if r.replica_of is not None:
        err.print(
            f"{r.destination} is recorded as a copy of {r.replica_of}: it cannot be written "
            "or removed on its own, and `cnet dataset rm` removes it with the version",
            markup=False,
        )
    if r.merged:
        err.print(
            f"{r.destination} holds other files too: the copy is yours, not recorded as "
            "the version's",
            markup=False,
        )
    if k.left_out:
        err.print(
            f"{_many(k.left_out, 'entry', 'entries')} in the source not copied (links, "
            "special files, partial files, a .cnet directory at its top): a copy holds "
            "regular files and directories only, and never a data server's own files",
            markup=False,
        )


def ls(
    target: Annotated[str, typer.Argument(help="POOL-CPI:/path or cnet://dataset/NAME[@VERSION]")],
    limit: Annotated[
        int | None,
        typer.Option(min=1, max=10_000, help="one page of this many names (default: all)"),
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="start after this name (a page's `next`)")
    ] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="encrypt the answer")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """What a pool path or a dataset holds: a directory's entries in name order, or the
    file itself. Links are shown, never followed."""
    from computenet.model import EntryKind
    from computenet.transfer.wire import TransferError

    if after == "":
        raise CLIError("--after: name the entry to start after (a page's `next`)", 2)
    with client() as c:
        try:
            page = c.ls(target, after=after, limit=limit, tls=tls)
        except TransferError as e:
            raise CLIError(str(e)) from e
    if as_json:
        print(page.model_dump_json(indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("KIND", "SIZE", "MODIFIED", "NAME"):
        table.add_column(col, justify="right" if col == "SIZE" else "left")
    for x in page.entries:
        when = datetime.fromtimestamp(x.mtime_ns / 1e9, UTC)
        table.add_row(
            x.kind.value,
            "-" if x.kind is EntryKind.dir else format_bytes(x.size),
            when.strftime("%Y-%m-%d %H:%M"),
            escape(printable(x.name) + ("/" if x.kind is EntryKind.dir else "")),
        )
    out.print(table)
    if page.next is not None:
        err.print(f"more after {page.next!r}: --after {shlex.quote(page.next)}", markup=False)


def rm(
    target: Annotated[str, typer.Argument(help="POOL-CPI:/path")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="a directory, with everything under it")
    ] = False,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="encrypt the request")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Remove a file or a link from a pool, or with -r a directory and everything under
    it. A dataset's copy goes with `cnet dataset rm`."""
    from computenet.transfer.wire import TransferError

    with client() as c:
        try:
            gone = c.rm(target, recursive=recursive, tls=tls)
        except TransferError as e:
            raise CLIError(str(e)) from e
    if as_json:
        print(gone.model_dump_json(indent=2))
        return
    what = f"{_many(gone.files, 'file')}, {format_bytes(gone.bytes)}"
    out.print(f"removed {gone.pool}:{gone.path} ({gone.kind.value}; {what})", markup=False)


dataset_app = typer.Typer(
    help="Datasets: named, versioned trees held by pools.", no_args_is_help=True
)


@dataset_app.command("ls")
def dataset_ls(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Every dataset version, newest first within a name, with the pools that hold it."""
    with client() as c:
        versions = c.datasets()
    if as_json:
        print(json.dumps([v.model_dump(mode="json") for v in versions], indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("DATASET", "VERSION", "OWNER", "SIZE", "FILES", "TREE HASH", "POOLS", "CREATED"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            v.name,
            v.version,
            v.tenant,
            format_bytes(v.total_bytes),
            str(v.files),
            v.tree_hash[:12],
            str(len(v.replicas)),
            ago(v.created_at),
        )
    out.print(table)


@dataset_app.command("show")
def dataset_show(
    name: Annotated[str, typer.Argument(help="NAME, or cnet://dataset/NAME")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print as JSON: name, versions, removed")
    ] = False,
) -> None:
    """A dataset's versions and, for each, which pools hold a copy and where."""
    from computenet.model.dataset import SCHEME, DataURIError, parse_dataset, some_versions

    try:
        ref = parse_dataset(name if name.startswith("cnet://") else SCHEME + name)
    except DataURIError as e:
        raise CLIError(str(e), 2) from e
    with client() as c:
        d = c.dataset(ref.name)
    versions = [v for v in d.versions if ref.version in (None, v.version)]
    if ref.version is not None and not versions:
        if ref.version in d.removed:
            raise CLIError(f"{ref}: that version was removed")
        have = some_versions([v.version for v in d.versions]) or "none"
        raise CLIError(f"{ref}: no such version (it has {have})")
    if as_json:  # as GET /v1/datasets/NAME answers, narrowed to the version named
        shown = d.model_copy(
            update={"versions": versions, "removed": d.removed if not ref.version else []}
        )
        print(shown.model_dump_json(indent=2))
        return
    if not versions:
        out.print(f"{SCHEME}{d.name}: no versions", markup=False)
    for v in versions:
        out.print(
            f"[bold]{v.uri}[/bold]  {format_bytes(v.total_bytes)}, {_many(v.files, 'file')}, "
            f"tree {v.tree_hash}, by {v.tenant}, {ago(v.created_at)}"
        )
        for r in v.replicas:
            out.print(f"  {r.pool}:{printable(r.path)}  (since {ago(r.added_at)})", markup=False)
    if d.removed and ref.version is None:
        gone = some_versions(d.removed, at_most=10)
        out.print(f"removed: {gone} (never used again)", markup=False)


@dataset_app.command("rm")
def dataset_rm(
    target: Annotated[str, typer.Argument(help="NAME@VERSION, or cnet://dataset/NAME@VERSION")],
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="encrypt the requests")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Remove one version of a dataset: the node forgets it, then each pool's copy is
    removed. Only the dataset's owner (or an admin) may."""
    from computenet.model.dataset import SCHEME, DataURIError, parse_dataset
    from computenet.transfer.wire import TransferError

    try:
        ref = parse_dataset(target if target.startswith("cnet://") else SCHEME + target)
    except DataURIError as e:
        raise CLIError(str(e), 2) from e
    if ref.version is None:
        raise CLIError(f"{ref}: name the version to remove, {ref}@VERSION", 2)
    with client() as c:
        try:
            gone = c.remove_dataset(str(ref), tls=tls)
        except TransferError as e:
            raise CLIError(str(e)) from e
    if as_json:
        print(gone.model_dump_json(indent=2))
    else:
        v = gone.version
        held = _many(len(v.replicas), "copy", "copies")
        out.print(f"removed {v.uri} ({held}): {len(gone.removed)} removed", markup=False)
        for r in gone.removed:
            out.print(
                f"  {r.pool}:{r.path}  ({_many(r.files, 'file')}, {format_bytes(r.bytes)})",
                markup=False,
            )
        for where in gone.gone:
            out.print(f"  {where}  (gone already)", markup=False)
    if gone.left:
        stay = _many(len(gone.left), "copy stays", "copies stay")
        raise CLIError(f"{stay}: " + "; ".join(gone.left))
