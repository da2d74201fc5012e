"""The live index in columns: filters and ordering over 100,000 pools in a millisecond.

A query over pools is a handful of comparisons per pool; done pool by pool in Python it
costs tens of milliseconds at national scale. Here each numeric attribute is a numpy array
and each term one vectorised comparison. Text terms (region, vendor, model, ...) describe
what a pool *is*, which changes only when it re-registers, so their masks are computed once
and kept until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from computenet.model import PoolStatus
from computenet.node.query import Query, Term

if TYPE_CHECKING:
    from computenet.node.index import Entry

STATUS = {PoolStatus.online: 0, PoolStatus.suspect: 1, PoolStatus.offline: 2}
_CMP = {
    ">=": np.greater_equal,
    "<=": np.less_equal,
    ">": np.greater,
    "<": np.less,
    "=": np.equal,
    "!=": np.not_equal,
}
Array = npt.NDArray[np.float64]


class Columns:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.pos = {e.pool.cpi: i for i, e in enumerate(entries)}
        n = len(entries)
        self.status = np.zeros(n, dtype=np.int8)
        self.num: dict[str, Array] = {
            k: np.full(n, np.nan)
            for k in ("cpus", "gpus", "mem", "gpumem", "price_cpu", "price_gpu", "scu", "carbon")
        }
        self._text: dict[tuple[str, tuple[str, ...]], npt.NDArray[np.bool_]] = {}
        for i, e in enumerate(entries):
            self._fill_static(i, e)
            self.update(i, e)

    def _fill_static(self, i: int, e: Entry) -> None:
        p = self.num
        pool = e.pool
        p["gpumem"][i] = e.max_device_memory
        p["scu"][i] = np.nan if pool.scu is None else pool.scu
        p["carbon"][i] = np.nan if pool.carbon_intensity is None else pool.carbon_intensity
        if pool.price is not None:
            p["price_cpu"][i], p["price_gpu"][i] = pool.price.cpu_hour, pool.price.gpu_hour

    def update(self, i: int, e: Entry) -> None:
        """What changes between registrations: free capacity and status."""
        self.entries[i] = e
        self.status[i] = STATUS[e.pool.status]
        self.num["cpus"][i] = e.free.cpus
        self.num["gpus"][i] = e.free.gpus
        self.num["mem"][i] = e.free.memory_bytes

    def _text_mask(self, term: Term) -> npt.NDArray[np.bool_]:
        key = (term.key, term.words)
        mask = self._text.get(key)
        if mask is None:
            probe = Query((Term(term.key, "=", words=term.words),))
            mask = np.fromiter(
                (e.matches(probe) for e in self.entries), dtype=bool, count=len(self.entries)
            )
            self._text[key] = mask
        return mask if term.op == "=" else ~mask

    def select(self, query: Query, include_all: bool) -> npt.NDArray[np.intp]:
        n = len(self.entries)
        mask = np.ones(n, dtype=bool)
        status_term = query.wants("status")
        if not include_all and status_term is None:
            mask &= self.status == 0
        for t in query.terms:
            if t.key == "status":
                want = np.isin(
                    self.status,
                    [STATUS[PoolStatus(w)] for w in t.words if w in PoolStatus.__members__],
                )
                mask &= want if t.op == "=" else ~want
            elif t.words or t.key.startswith("label."):
                mask &= self._text_mask(t)
            else:
                col = self._numeric(t.key, query)
                with np.errstate(invalid="ignore"):
                    mask &= _CMP[t.op](col, t.number)  # NaN (unknown) never matches
        return np.flatnonzero(mask)

    def _numeric(self, key: str, query: Query) -> Array:
        if key == "price":
            return self.num["price_gpu" if query.gpus > 0 else "price_cpu"]
        return self.num[key]

    def ordered(
        self,
        found: npt.NDArray[np.intp],
        order: tuple[str, bool] | None,
        query: Query,
        limit: int,
    ) -> list[int]:
        if len(found) == 0:
            return []
        if order is None:
            keys = (found, -self.num["cpus"][found], -self.num["gpus"][found])
            idx = np.lexsort(keys)  # last key first: free GPUs, then CPUs, then position
        else:
            key, desc = order
            if key in ("name", "region"):
                words = [self.entries[i].text(key)[0] for i in found]
                idx = np.array(sorted(range(len(found)), key=lambda j: words[j], reverse=desc))
            else:
                col = self._numeric(key, query)[found]
                unknown = np.isnan(col)
                value = np.where(unknown, 0.0, -col if desc else col)
                idx = np.lexsort((found, value, unknown))  # unknowns last in either direction
        return [int(found[j]) for j in idx[:limit]]
