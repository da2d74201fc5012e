"""Shared building blocks of the standard interfaces: strict models and human quantities."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


class Model(BaseModel):
    """Base of every wire model: unknown fields are errors, so typos never pass silently;
    NaN and infinity are refused, since no comparison or store handles them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


INT64 = 2**63 - 1  # a database's integer column: larger does not fit


def as_text(text: str) -> str:
    """``text`` as a node takes it: NUL and lone surrogates (a file name read with
    ``surrogateescape``) become U+FFFD, as undecodable bytes do. One character each, so
    lengths stay."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    return text


def utcnow() -> datetime:
    return datetime.now(UTC)


_MEM_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "ki": 2**10,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mi": 2**20,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gi": 2**30,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "ti": 2**40,
    "tib": 2**40,
    "p": 10**15,
    "pb": 10**15,
    "pi": 2**50,
    "pib": 2**50,
}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
# "4G" means 4 GiB, as in Slurm and docker: users size memory in binary units.
_MEM_SHORT = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def parse_memory(value: Any) -> Any:
    """Accept bytes as an int or a string such as ``512M``, ``4G``, ``4GiB`` or ``4GB``."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size such as 512M or 4G")
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        return value
    m = _MEM_RE.match(value)
    if not m:
        raise ValueError(f"invalid size {value!r}; use a number with K, M, G, T or P, e.g. 4G")
    number, unit = float(m.group(1)), m.group(2).lower()
    factor = _MEM_SHORT.get(unit) or _MEM_UNITS.get(unit)
    if factor is None:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {value!r}")
    if not math.isfinite(number * factor):
        raise ValueError(f"{value!r} is too large a size")
    return int(number * factor)


_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)?", re.IGNORECASE)
_DUR_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept seconds, ``90s``, ``10m``, ``1h30m``, ``2d`` or Slurm's ``HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError("duration must be such as 30s, 10m or 1h")
    if isinstance(value, int | float) or not isinstance(value, str):
        return value
    text = value.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) > 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise ValueError(f"invalid duration {value!r}")
        if any(int(p) >= 60 for p in parts[1:]):  # the first may run on: 90:00 is 90 minutes
            raise ValueError(f"invalid duration {value!r}: minutes and seconds go up to 59")
        total = 0.0
        for p in parts:
            total = total * 60 + int(p)
        return total
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2).lower() if m.group(2) else None]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}; use e.g. 30s, 10m, 1h30m or 01:30:00")
    return total


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(round(n, 1)) < 1024 or unit == "PiB":  # never "1024.0 KiB"
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def format_apart(a: float, b: float) -> tuple[str, str]:
    """Two sizes for one message, in bytes where rounding would show them equal: a
    refusal that says "needs 1.0 MiB, 1.0 MiB is left" explains nothing."""
    fa, fb = format_bytes(a), format_bytes(b)
    if fa == fb and a != b:
        return f"{a:,.0f} bytes", f"{b:,.0f} bytes"
    return fa, fb


MAX_MEMORY = 2**50  # 1 PiB: larger is a typo, not a request
MAX_DURATION = 366 * 86400.0


def _at_most_pib(n: int) -> int:
    if n > MAX_MEMORY:  # said in the units it was asked in, not in bytes
        asked, most = format_apart(n, MAX_MEMORY)
        raise ValueError(f"{asked} is more than the limit, {most}")
    return n


def _at_most_a_year(s: float) -> float:
    if s > MAX_DURATION:
        days = f"{s / 86400:,.0f} days"
        asked = days if days != "366 days" else f"{s:,.0f} seconds"  # not "366 is over 366"
        raise ValueError(f"{asked} is more than the limit, 366 days")
    return s


MemoryBytes = Annotated[
    int,
    BeforeValidator(parse_memory),
    Field(ge=0, json_schema_extra={"maximum": MAX_MEMORY}),
    AfterValidator(_at_most_pib),
]
Seconds = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(gt=0, json_schema_extra={"maximum": MAX_DURATION}),
    AfterValidator(_at_most_a_year),
]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


def _plain(text: str) -> str:
    """Refuses control and format characters (a newline, an escape, a right-to-left
    override): a key shown in a listing must read as what it is."""
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise ValueError(f"{text[:40]!r} holds a control or format character")
    return text


LabelKey = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_plain)]
LabelValue = Annotated[str, Field(max_length=4096)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=64)]


_SIMPLE = re.compile(r"^\^\[([^\]]+)\](?:\[([^\]]+)\]\{(\d+),(\d+)\})?\$$")
_FORMS = {  # patterns past the two shapes below, as a person would say them
    r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$": "1 to 32 of a-z, 0-9, '-', starting and "
    "ending with a-z, 0-9",
}
_ONE = re.compile(r"^\^\[([^\]]+)\](\*|\+|\{(\d+),(\d+)\})\$$")


def _chars(cls: str) -> str:
    ranges = re.findall(r".-.|.", cls.replace("\\", ""))
    return ", ".join(r if len(r) == 3 else repr(r) for r in ranges)


def allowed_form(pattern: str) -> str | None:
    """A pattern of one or two character classes as a person would say it, so that a
    refusal says what is allowed: ``^[a-z0-9][a-z0-9_.-]{0,62}$`` is "1 to 63 of a-z, 0-9,
    '_', '.', '-', starting with a-z, 0-9". None for any other pattern."""
    if pattern in _FORMS:
        return _FORMS[pattern]
    if (one := _ONE.match(pattern)) is not None:
        cls, times, low, high = one.groups()
        if times == "*":
            return f"only {_chars(cls)}, or nothing"
        if times == "+":
            return f"one or more of {_chars(cls)}"
        return f"{low} to {high} of {_chars(cls)}"
    m = _SIMPLE.match(pattern)
    if m is None:
        return None
    first, rest, low, high = m.groups()
    if rest is None:
        return f"one of {_chars(first)}"
    return f"{int(low) + 1} to {int(high) + 1} of {_chars(rest)}, starting with {_chars(first)}"
