"""``cnet cp``: files and trees between this machine and a pool, either way."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from computenet.cli.output import CLIError, err, out
from computenet.cli.session import client
from computenet.model import SyncLevel, parse_duration


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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cp(
    src: Annotated[str, typer.Argument(help="a local path or POOL-CPI:/path")],
    dst: Annotated[str, typer.Argument(help="a local path or POOL-CPI:/path")],
    streams: Annotated[
        int | None, typer.Option(min=1, max=64, help="parallel streams (default: by size)")
    ] = None,
    sync: Annotated[
        SyncLevel, typer.Option(help="leave a file at the destination that matches by this")
    ] = SyncLevel.none,
    verify: Annotated[
        bool, typer.Option(help="read each file back before it is put in place")
    ] = True,
    deadline: Annotated[
        str | None, typer.Option(help="give up after this long, e.g. 10m (resume later)")
    ] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="encrypt data streams")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Copy a file or a directory between this machine and a pool; run it again after an
    interruption and only what is missing moves."""
    from computenet.transfer.wire import TransferError

    try:
        seconds = float(parse_duration(deadline)) if deadline else None
    except ValueError as e:
        raise CLIError(f"--deadline: {e}", 2) from e
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    hidden = quiet or as_json
    with client() as c, Progress(*columns, console=err, disable=hidden, transient=True) as bar:
        try:
            r = c.copy(
                src,
                dst,
                streams=streams,
                sync=sync,
                verify=verify,
                deadline=seconds,
                tls=tls,
                watcher=_Bar(bar),
            )
        except TransferError as e:
            raise CLIError(str(e)) from e
        except OSError as e:
            raise CLIError(f"{e.filename or src}: {e.strerror or e}") from e
    if as_json:
        print(r.model_dump_json(indent=2))
        return
    k = r.counters
    rate = f"{_size(r.rate)}/s" if k.bytes else "-"
    files = k.files + k.files_skipped
    out.print(
        f"{r.source} -> {r.destination}: {files} file{'s' if files != 1 else ''}, "
        f"{_size(k.bytes)} moved in {r.seconds:.2f}s ({rate}, {r.streams} streams); "
        f"{k.chunks_present} chunks already there, {k.files_skipped} files unchanged, "
        f"{k.retries} retries, {k.faults} faults"
    )
