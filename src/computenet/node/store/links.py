"""The links between pools, learnt from the copies that crossed them.

Each input an agent fetches from another pool reports its bytes and seconds; the node
keeps, per direction, a moving average of the rate. A copy too small to measure a rate
(its time is mostly the round trips) is not counted. No probe traffic is ever sent: a
link nothing has crossed is unknown, and the scheduler takes a default for it.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from computenet.model.transfer import Link
from computenet.node.store.tables import links

MIN_SAMPLE = 1 << 20  # bytes: below this a copy's time is its round trips
WEIGHT = 0.3  # of the newest sample in the average: a changed link shows within a few


def record(conn: Connection, source: str, destination: str, nbytes: int, seconds: float) -> bool:
    """Counts one copy's rate into the link's average; False where it was too small to."""
    if nbytes < MIN_SAMPLE or seconds <= 0 or source == destination:
        return False
    rate, now = nbytes / seconds, time.time()
    key = and_(links.c.source == source, links.c.destination == destination)
    row = conn.execute(select(links.c.rate, links.c.samples).where(key)).first()
    if row is not None:
        conn.execute(
            update(links)
            .where(key)
            .values(
                rate=row.rate + WEIGHT * (rate - row.rate),
                samples=row.samples + 1,
                updated_at=now,
            )
        )
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
    return {(r.source, r.destination): r.rate for r in conn.execute(select(links)).all()}


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
