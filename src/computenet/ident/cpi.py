"""The computing power identifier (CPI): one parser and one formatter for the whole system.

A CPI is ``cpi:<authority>:<path>``. The authority is the node code delegated by the root
(dot-separated labels); the path is ``provider[/pool[/machine[/device]]]``. The grammar is
kept deliberately narrow (lower case, no escapes) so that a CPI can be compared as a string,
used in URLs and file names unchanged, and never means two things. ``docs/cpi.md`` has it
in ABNF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

SCHEME = "cpi"
MAX_LENGTH = 255
LEVELS = ("provider", "pool", "machine", "device")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
_AUTHORITY_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL}){{0,7}}$")
_SEGMENT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")


class CPIError(ValueError):
    """A string that is not a CPI; the message says which rule it breaks."""


@dataclass(frozen=True, slots=True)
class CPI:
    authority: str
    path: tuple[str, ...]

    def __post_init__(self) -> None:
        check_authority(self.authority)
        if not 1 <= len(self.path) <= len(LEVELS):
            raise CPIError(f"a CPI path has 1 to {len(LEVELS)} segments, got {len(self.path)}")
        for level, seg in zip(LEVELS, self.path, strict=False):
            check_segment(seg, level)
        if len(str(self)) > MAX_LENGTH:
            raise CPIError(f"a CPI is at most {MAX_LENGTH} characters")

    def __str__(self) -> str:
        return f"{SCHEME}:{self.authority}:{'/'.join(self.path)}"

    @property
    def kind(self) -> str:
        return LEVELS[len(self.path) - 1]

    def child(self, segment: str) -> CPI:
        return CPI(self.authority, (*self.path, segment))

    @property
    def parent(self) -> CPI | None:
        return CPI(self.authority, self.path[:-1]) if len(self.path) > 1 else None

    def is_under(self, other: CPI) -> bool:
        return self.authority == other.authority and self.path[: len(other.path)] == other.path


def check_authority(authority: str) -> str:
    if not isinstance(authority, str) or not _AUTHORITY_RE.fullmatch(authority):
        raise CPIError(
            f"invalid node code {authority!r}: dot-separated labels of a-z, 0-9 and '-', "
            "each 1-32 characters, starting and ending with a letter or digit, at most 8 labels"
        )
    return authority


def check_segment(segment: str, level: str = "segment") -> str:
    if not isinstance(segment, str) or not _SEGMENT_RE.fullmatch(segment):
        raise CPIError(
            f"invalid {level} name {segment!r}: 1-63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting and ending with a letter or digit"
        )
    return segment


def parse(text: str) -> CPI:
    if not isinstance(text, str):
        raise CPIError("a CPI is a string")
    if len(text) > MAX_LENGTH:
        raise CPIError(f"a CPI is at most {MAX_LENGTH} characters")
    scheme, sep, rest = text.partition(":")
    if not sep or scheme != SCHEME:
        raise CPIError(f"a CPI starts with '{SCHEME}:', got {text[:40]!r}")
    authority, sep, path = rest.partition(":")
    if not sep:
        raise CPIError("a CPI is cpi:<node-code>:<provider>[/<pool>[/<machine>[/<device>]]]")
    return CPI(authority, tuple(path.split("/")))


def _validate(value: Any) -> str:
    return str(parse(value))


CPIStr = Annotated[str, AfterValidator(_validate)]
