"""Two node replicas on one PostgreSQL: every job placed and run exactly once, and no pool
ever holds more than it has."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select

from computenet import AsyncClient
from computenet.model import JobState
from computenet.node.store.db import normalize_url
from computenet.node.store.tables import attempts
from conftest import Network, _pg_database, free_port

pytestmark = pytest.mark.slow
JOBS = 500


@pytest.fixture
def replicas(tmp_path: Path, pg_available: None) -> Iterator[tuple[Network, Network]]:
    for url in _pg_database():
        a = Network(tmp_path / "home", url)
        b = Network(tmp_path / "home", url, port=free_port())
        try:
            a.start_node()  # first, alone: it migrates the schema
            b.start_node()
            yield a, b
        finally:
            for n in (a, b):
                n.stop()


def declared(tmp: Path, name: str, cpus: int) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {"pool": name, "machines": [{"name": name, "cpus": cpus, "memory_bytes": "8G"}]}
        )
    )
    return path


def test_two_replicas_place_each_job_once_without_overcommit(
    replicas: tuple[Network, Network], tmp_path: Path
) -> None:
    a, b = replicas
    # Jobs append to one file of the machine's, to show that each ran once: no sandbox.
    unboxed = ("--option", "sandbox=off")
    a.start_agent("r1", "--config", str(declared(tmp_path, "r1", 4)), *unboxed)
    b.admin_token = a.token  # one database, one set of tokens
    b.start_agent("r2", "--config", str(declared(tmp_path, "r2", 3)), *unboxed)
    ran = tmp_path / "ran.txt"
    spec = {
        "command": ["sh", "-c", f'echo "$CNET_JOB_ID" >> {ran}'],
        "resources": {"cpus": 1},
    }

    async def main() -> list[JobState]:
        async with AsyncClient(a.url, a.token) as ca, AsyncClient(b.url, a.token) as cb:
            clients = (ca, cb)
            jobs = await asyncio.gather(*(clients[i % 2].submit(spec) for i in range(JOBS)))
            done = await asyncio.gather(*(clients[i % 2].wait(j.id) for i, j in enumerate(jobs)))
            return [j.state for j in done]

    states = asyncio.run(main())
    assert states == [JobState.COMPLETE] * JOBS
    lines = ran.read_text().split()
    assert len(lines) == JOBS and len(set(lines)) == JOBS  # each ran exactly once

    engine = create_engine(normalize_url(a.db_url))
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                attempts.c.job_id,
                attempts.c.number,
                attempts.c.pool_cpi,
                attempts.c.cpus,
                attempts.c.scheduled_at,
                attempts.c.ended_at,
            )
        ).all()
    engine.dispose()
    assert len(rows) == JOBS and all(r.number == 1 for r in rows)
    capacity = {"r1": 4, "r2": 3}
    for pool, cap in capacity.items():
        # Held from placement until the end is reported: never more than the pool has.
        events = sorted(
            [(r.scheduled_at, r.cpus) for r in rows if r.pool_cpi.endswith(pool)]
            + [(r.ended_at, -r.cpus) for r in rows if r.pool_cpi.endswith(pool)],
            key=lambda e: (e[0], e[1]),
        )
        held = peak = 0.0
        for _, delta in events:
            held += delta
            peak = max(peak, held)
        assert 0 < peak <= cap, f"{pool} held {peak} CPUs at once, has {cap}"
    with_pools = {r.pool_cpi.rsplit("/", 1)[-1] for r in rows}
    assert with_pools == {"r1", "r2"}  # both replicas' pools did work
