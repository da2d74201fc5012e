"""The links between pools, learnt from the copies that crossed them.

Each input an agent fetches from another pool reports its bytes and seconds; the node
keeps, per direction, a moving average of the rate. A copy too small to measure a rate
(its time is mostly the round trips) is not counted, nor one that states a rate no link
has. No probe traffic is ever sent: a link nothing has crossed, or nothing for a week,
is unknown, and the scheduler takes a default for it.
"""

from __future__ import annotations

import math
import time

from sqlalchemy import Connection, and_, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from computenet.model.transfer import Link
from computenet.node.store.tables import links

MIN_SAMPLE = 1 << 20  # bytes: below this a copy's time is its round trips
WEIGHT = 0.3  # of the newest sample in the average: a changed link shows within a few
RATES = (1e3, 1e11)  # bytes a second a sample may state: from a stalled link to 800 Gb/s
KEPT = 7 * 86400.0  # seconds a link nothing has crossed since counts as measured


def record(conn: Connection, source: str, destination: str, nbytes: int, seconds: float) -> bool:
    """Counts one copy's rate into the link's average; False where it was too small to,
    or states a rate no link has."""
    if nbytes < MIN_SAMPLE or not seconds > 0 or source == destination:
        return False
    rate, now = nbytes / seconds, time.time()
    if not (math.isfinite(rate) and RATES[0] <= rate <= RATES[1]):
        return False
    key = and_(links.c.source == source, links.c.destination == destination)
    stale = links.c.updated_at < now - KEPT  # unknown again: the sample starts afresh
    moved = conn.execute(  # in one statement: two node replicas may record at once
        update(links)
        .where(key)
        .values(
            rate=case((stale, rate), else_=links.c.rate + WEIGHT * (rate - links.c.rate)),
            samples=case((stale, 1), else_=links.c.samples + 1),
            updated_at=now,
        )
    )
    if moved.rowcount:
        return True
    try:
        with conn.begin_nested():
            conn.execute(
                insert(links).values(
                    source=source, destination=destination, rate=rate, samples=1, updated_at=now
                )
            )
    except IntegrityError:  # a sample of the same new link, recorded meanwhile: one is lost
        return False
    return True


def rates(conn: Connection) -> dict[tuple[str, str], float]:
    """The links measured within ``KEPT``: one nothing has crossed for longer may have
    changed, and counts as unknown until a copy crosses it again."""
    q = select(links).where(links.c.updated_at >= time.time() - KEPT)
    return {(r.source, r.destination): r.rate for r in conn.execute(q).all()}


def list_all(conn: Connection) -> list[Link]:
    rows = conn.execute(select(links).order_by(links.c.source, links.c.destination)).all()
    return [
        Link(
            source=r.source,
            destination=r.destination,
            rate=r.rate,
            samples=r.samples,
            updated_at=r.updated_at,
        )
        for r in rows
    ]
