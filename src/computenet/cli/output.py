"""How the CLI speaks: Rich tables on stdout, one-line reasons on stderr, exit codes."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape

from computenet.model import JobState
from computenet.model.common import allowed_form

# Piped output keeps whole rows: wrapping at 80 columns would break scripts and grep.
# No emoji codes: a CPI or a job's name may hold ``:x:``, and is printed as it is.
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, emoji=False, width=None if sys.stderr.isatty() else 200)

STATE_STYLE = {
    JobState.QUEUED: "yellow",
    JobState.SCHEDULED: "cyan",
    JobState.STAGING: "cyan",
    JobState.RUNNING: "blue",
    JobState.COMPLETE: "green",
    JobState.FAILED: "red",
    JobState.CANCELED: "magenta",
}


class CLIError(Exception):
    """Ends the command with a one-line reason and a non-zero exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def printable(name: str) -> str:
    """A name with its control characters written as escapes (``new\\nline``), as
    ``ls -b`` shows them: one raw newline would show one entry as two."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # names may hold [...]
    sys.exit(code)


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    secs = (datetime.now(UTC) - when).total_seconds()
    if secs < 60:
        return f"{secs:.0f}s ago"
    if secs < 3600:
        return f"{secs / 60:.0f}m ago"
    if secs < 86400:
        return f"{secs / 3600:.0f}h ago"
    return when.strftime("%Y-%m-%d %H:%M")


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    secs = ((end or datetime.now(UTC)) - start).total_seconds()
    if secs < 1:
        return f"{secs * 1000:.0f}ms"
    if secs < 120:
        return f"{secs:.1f}s"
    return f"{secs / 60:.1f}m"


def state(s: JobState) -> str:
    return f"[{STATE_STYLE[s]}]{s.value}[/]"


def friendly(error: Any) -> str:
    """A pydantic error as a person would say it: no 'Value error,' and no regexes."""
    kind, msg = error.get("type", ""), str(error.get("msg", "invalid"))
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_pattern_mismatch":
        form = allowed_form(str(error.get("ctx", {}).get("pattern", "")))
        return f"{error.get('input')!r} is not in the allowed form" + (f": {form}" if form else "")
    if kind == "string_type" and isinstance(error.get("input"), bool):
        return 'expected text; in YAML write it in quotes ("true"), or it reads as a boolean'
    return msg.removeprefix("Value error, ")
