"""Pools by name: the name ``cnet resources`` shows, where a CPI is long to type."""

from __future__ import annotations

from collections.abc import Iterable

from computenet.model import Pool


def pool_cpi(pool: str, pools: Iterable[Pool]) -> str:
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
