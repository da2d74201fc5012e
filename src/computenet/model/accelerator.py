"""Asking for accelerators without naming any vendor's terms: one grammar, parsed here.

    H100                 any H100 (every entry the catalog finds for the name)
    H100:8               eight of them
    A100+                this class or better, by the catalog (same line, later or equal)
    bf16>=300T,mem>=64G  any device that meets these figures, per visible device
    mem>=64G:2           two of those

Figures: ``fp64 fp32 tf32 fp16 bf16 fp8 int8`` in TFLOPS (``T`` optional), ``mem`` in bytes
(``64G``), ``bw`` in GB/s. The CLI (``--accelerator``), the SDK and REST (``resources.
accelerator``) and the scheduler all go through ``resolve``; a request no catalog entry can
meet is refused with the entries closest to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from computenet.model.catalog import PRECISIONS, Catalog, CatalogEntry, Requirement
from computenet.model.common import parse_memory

_COUNT = re.compile(r"^(?P<body>.+?)(?::(?P<count>\d{1,4}))?$")
_TERM = re.compile(r"^(?P<key>[a-z0-9]+)\s*>=\s*(?P<value>[0-9.]+[a-zA-Z]*)$")
FIGURE_KEYS = (*PRECISIONS, "mem", "bw")


class AcceleratorError(ValueError):
    """A request the grammar or the catalog cannot satisfy; the message says why."""


@dataclass(frozen=True)
class Accelerators:
    text: str
    count: int | None
    entries: frozenset[str]  # ids of the catalog entries that satisfy it


def resolve(text: str, catalog: Catalog) -> Accelerators:
    text = text.strip()
    m = _COUNT.match(text)
    if not text or m is None:
        raise AcceleratorError("empty accelerator request")
    body, count = m.group("body").strip(), m.group("count")
    n = int(count) if count else None
    if n == 0:
        raise AcceleratorError(f"{text!r}: a count is at least 1")
    if ">=" in body:
        entries = _by_figures(body, catalog)
    elif body.endswith("+"):
        entries = catalog.or_better(body[:-1].strip())
        if not entries:
            raise AcceleratorError(f"{text!r}: the catalog knows no {body[:-1]!r}; {_known()}")
    else:
        entries = catalog.find(body)
        if not entries:
            raise AcceleratorError(f"{text!r}: the catalog knows no {body!r}; {_known()}")
    accel = [e for e in entries if e.kind.value != "cpu"]
    if not accel:
        raise AcceleratorError(f"{text!r} names no accelerator")
    return Accelerators(text, n, frozenset(e.id for e in accel))


def _by_figures(body: str, catalog: Catalog) -> list[CatalogEntry]:
    peaks: dict[str, float] = {}
    memory: int | None = None
    bandwidth: float | None = None
    for raw in body.split(","):
        t = _TERM.match(raw.strip())
        if t is None:
            raise AcceleratorError(
                f"{raw.strip()!r}: expected FIGURE>=VALUE, FIGURE one of {', '.join(FIGURE_KEYS)}"
            )
        key, value = t.group("key"), t.group("value")
        try:
            if key == "mem":
                memory = parse_memory(value)
            elif key == "bw":
                bandwidth = float(value.rstrip("GgBb/s") or "x")
            elif key in PRECISIONS:
                peaks[key] = float(value.rstrip("Tt") or "x")
            else:
                raise AcceleratorError(
                    f"{key!r} is not a figure; use one of {', '.join(FIGURE_KEYS)}"
                )
        except ValueError as e:
            if isinstance(e, AcceleratorError):
                raise
            raise AcceleratorError(f"{raw.strip()!r}: {value!r} is not a number") from None
    req = Requirement.model_validate(
        {"memory_bytes": memory, "memory_bandwidth_gbps": bandwidth, "peak_tflops": peaks}
    )
    found = [e for e in catalog.entries if e.kind.value != "cpu" and req.shortfall(e) == 0]
    if not found:
        near = catalog.closest(req)
        names = ", ".join(f"{e.id} ({_figures(e, req)})" for e in near) or "none"
        raise AcceleratorError(f"no accelerator in the catalog meets {body!r}; closest: {names}")
    return found


def _figures(entry: CatalogEntry, req: Requirement) -> str:
    parts = []
    for figure in req.minimums():
        have = entry.device_figure(figure)
        if figure == "memory_bytes":
            parts.append(f"mem {have / 2**30:.0f}G" if have else "mem ?")
        elif figure == "memory_bandwidth_gbps":
            parts.append(f"bw {have:.0f}" if have else "bw ?")
        else:
            parts.append(f"{figure} {have:g}T" if have else f"{figure} ?")
    return ", ".join(parts)


def _known() -> str:
    return "'cnet catalog' lists what it knows"
