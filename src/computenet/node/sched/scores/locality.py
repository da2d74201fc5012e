"""Data locality: the bytes that would have to move to the pool before the job can start.

An input a pool already holds (a replica of the dataset version, or a pool path in that
pool) counts zero; any other input counts its size. The node has no measure of the links
between pools, so every remote link counts the same: fewer bytes to move wins, wherever
they come from. An input the node does not know (a dataset deleted since submission)
counts nothing anywhere. Data named by several inputs (paths inside one version, say)
moves once, and counts once.
"""

from __future__ import annotations

from computenet.model.dataset import split_input
from computenet.node.sched.framework import Context, JobView, PoolView


class DataLocality:
    name = "locality"
    higher_is_better = False

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        moved = 0
        for uri in dict.fromkeys(split_input(u)[0] for u in job.inputs):
            known = ctx.data(uri)
            if known is not None and pool.cpi not in known[1]:
                moved += known[0]
        return float(moved)
