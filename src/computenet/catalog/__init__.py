"""The accelerator catalog shipped with computenet: loading, validation and error reporting.

The data lives in ``accelerators.yaml`` beside this module, so it travels inside the wheel
and needs no network or configuration. It is validated on every load: a figure without a
source, a typo in a field name or a name shared by two entries fails loudly at start-up,
naming the entry and the field, rather than misplacing a job later.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from computenet import yamlfile
from computenet.model.catalog import (
    PRECISIONS,
    RUNTIME_ENV,
    VENDOR_NAMES,
    Catalog,
    CatalogEntry,
    Requirement,
    Runtime,
    Source,
    normalize_name,
)

DATA_FILE = "accelerators.yaml"

__all__ = [
    "DATA_FILE",
    "PRECISIONS",
    "RUNTIME_ENV",
    "VENDOR_NAMES",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "Requirement",
    "Runtime",
    "Source",
    "data_path",
    "load",
    "normalize_name",
    "parse",
    "read",
]


class CatalogError(ValueError):
    """The catalog data is malformed; the message lists every problem, one per line."""


def data_path() -> Traversable:
    """The packaged data file (inside the wheel or the source tree)."""
    return files(__name__) / DATA_FILE


def parse(data: Any, origin: str = "catalog") -> Catalog:
    """Validate already-parsed data; errors name the entry by its id, then the field."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        raise CatalogError(_describe(e, data, origin)) from None


def read(path: Path | Traversable, origin: str | None = None) -> Catalog:
    """Read and validate a catalog file, e.g. a site's own copy for testing new entries."""
    name = origin or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CatalogError(f"{name}: cannot read: {e}") from None
    try:
        data = yamlfile.load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"{name}: not valid YAML: {e}") from None
    return parse(data, name)


@functools.cache
def load() -> Catalog:
    """The packaged catalog, read once per process: it is immutable and consulted on every
    request and probe, so rereading it would only cost time."""
    return read(data_path(), origin=DATA_FILE)


def _describe(error: ValidationError, data: Any, origin: str) -> str:
    lines = []
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "entries" and isinstance(loc[1], int):
            where = f"entry {_entry_label(data, loc[1])}: "
            loc = loc[2:]
        field = ".".join(str(p) for p in loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{origin}: {where}{field + ': ' if field else ''}{msg}")
    return "\n".join(lines)


def _entry_label(data: Any, index: int) -> str:
    """The id when the entry has a usable one, else its position: ids are what people
    search the file for."""
    try:
        entry_id = data["entries"][index]["id"]
    except (KeyError, IndexError, TypeError):
        entry_id = None
    if isinstance(entry_id, str) and entry_id:
        return f"{entry_id!r}"
    return f"#{index + 1}"
