"""The discovery filter language: ``gpu>=2 mem>=40G region=cn-east price<=3``.

One parser for the REST API and the CLI (which sends the text as it is). A term is
``key op value``; terms are joined by spaces and all must hold. Values may be lists
(``vendor=nvidia,amd``: any of them). Resource terms are about what is *free* now.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from computenet.model.common import parse_memory
from computenet.model.resources import DeviceKind, PoolStatus
from computenet.node.errors import Invalid

_TERM = re.compile(r"^(?P<key>[a-z][a-z0-9_.-]*)(?P<op>>=|<=|!=|=|>|<)(?P<value>[^<>=!].*)$")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
    "!=": operator.ne,
}
NUMERIC = {"cpus", "gpus", "mem", "gpumem", "price", "scu", "carbon"}
TEXT = {"region", "provider", "backend", "status", "vendor", "model", "arch", "kind", "name"}
ALIASES = {"cpu": "cpus", "gpu": "gpus", "memory": "mem", "accelerators": "gpus"}
SIZES = {"mem", "gpumem"}
CLOSED = {"status": {s.value for s in PoolStatus}, "kind": {k.value for k in DeviceKind}}
ORDERS = {"price", "scu", "cpus", "gpus", "mem", "carbon", "name", "region"}


@dataclass(frozen=True)
class Term:
    key: str
    op: str
    number: float = 0.0
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...] = ()

    def wants(self, key: str) -> Term | None:
        return next((t for t in self.terms if t.key == key), None)

    @property
    def gpus(self) -> float:
        t = self.wants("gpus")
        return t.number if t is not None and t.op in (">=", ">", "=") else 0.0


def parse(text: str) -> Query:
    if len(text) > 2000:
        raise Invalid("a query is at most 2000 characters", field="q")
    terms = []
    for raw in text.split():
        m = _TERM.match(raw)
        if not m:
            raise Invalid(f"cannot read {raw!r}: a term is key>=value, key=value, ...", field="q")
        key, op, value = ALIASES.get(m["key"], m["key"]), m["op"], m["value"]
        if key in NUMERIC:
            terms.append(Term(key, op, number=_number(key, value)))
        elif key in TEXT or key.startswith("label."):
            if op not in ("=", "!="):
                raise Invalid(f"{key} takes = or !=, not {op}", field="q")
            words = tuple(w.lower() for w in value.split(",") if w)
            if key in CLOSED and (odd := [w for w in words if w not in CLOSED[key]]):
                known = ", ".join(sorted(CLOSED[key]))
                raise Invalid(f"{key} is one of {known}, not {odd[0]!r}", field="q")
            terms.append(Term(key, op, words=words))
        else:
            known = ", ".join(sorted(NUMERIC | TEXT | {"label.KEY"}))
            raise Invalid(f"unknown key {m['key']!r}; known: {known}", field="q")
    return Query(tuple(terms))


def _number(key: str, value: str) -> float:
    try:
        if key in SIZES:
            n = float(parse_memory(value))
        else:
            n = float(value.removesuffix("T") if key == "scu" else value)
        if not math.isfinite(n):
            raise ValueError(value)
        return n
    except ValueError as e:
        raise Invalid(
            f"{key}: {value!r} is not a number{' or size' if key in SIZES else ''}", field="q"
        ) from e


def parse_order(order: str) -> tuple[str, bool]:
    descending = order.startswith("-")
    key = ALIASES.get(order.lstrip("-"), order.lstrip("-"))
    if key not in ORDERS:
        raise Invalid(
            f"cannot order by {order!r}; use one of {', '.join(sorted(ORDERS))}", field="order"
        )
    return key, descending
