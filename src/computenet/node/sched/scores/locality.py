"""Data locality: how long the job's inputs would take to move to the pool before it can
start.

An input a pool already holds (a replica of the dataset version, or a pool path in that
pool) counts zero. Any other input counts its size over the rate of the fastest link to
the pool from a pool that holds it and is not offline, as the copies that crossed that
link measured it (``store.links``); a link nothing has crossed for a week counts
``DEFAULT_RATE``. So a pool that holds the data wins, then one whose link to a copy has
proved fast; the fetch then takes that link. An input the node does not know (a dataset
deleted since submission) counts nothing anywhere. Data named by several inputs (paths
inside one version, say) moves once, and counts once. Pools whose inputs would arrive
within ``RESOLUTION`` of each other score nearly alike: a kilobyte to move is no reason
to prefer a busier pool.
"""

from __future__ import annotations

from computenet.model.dataset import split_input
from computenet.node.sched.framework import Context, JobView, PoolView

DEFAULT_RATE = 100e6  # bytes a second over a link not measured yet: about a 1 Gb/s WAN
RESOLUTION = 1.0  # seconds: less than a job's own start takes
UNSIZED = int(RESOLUTION * DEFAULT_RATE)  # bytes a pool-path input counts: the node
# does not know its size, and this much makes its own pool win over an otherwise equal one


class DataLocality:
    name = "locality"
    higher_is_better = False
    resolution = RESOLUTION

    def raw(self, job: JobView, pool: PoolView, ctx: Context) -> float | None:
        seconds = 0.0
        for uri in dict.fromkeys(split_input(u)[0] for u in job.inputs):
            known = ctx.data(uri)
            if known is None or pool.cpi in known[1]:
                continue
            size, holders = known
            rates = [ctx.link_rate(h, pool.cpi) or DEFAULT_RATE for h in holders]
            seconds += size / max(rates, default=DEFAULT_RATE)
        return seconds
