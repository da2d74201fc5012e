"""Pools by name: the name ``cnet resources`` shows, where a CPI is long to type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def cpi(self) -> str: ...


def query(pool: str) -> str:
    """The discovery query that finds pools of this name, whatever their status: one
    request, not the record of every pool."""
    return f"name={pool}"


def pool_cpi(pool: str, pools: Iterable[Named]) -> str:
    """``pool`` as a CPI: itself where it is one, else the one pool of that name. A name
    no pool has, or that several have, is refused (a ``ValueError``) rather than guessed."""
    if pool.startswith("cpi:"):
        return pool
    if not pool.strip():
        raise ValueError("pool: name a pool (cnet resources lists them)")
    found = [p.cpi for p in pools if p.name == pool]
    if len(found) == 1:
        return found[0]
    why = "no pool is named so" if not found else f"{len(found)} pools are: name its CPI"
    raise ValueError(f"pool {pool!r}: {why} (cnet resources lists them)")
