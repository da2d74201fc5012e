"""The schema on disk is exactly what the code describes, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, update

from computenet.node.store import links, tables
from computenet.node.store.db import Store
from computenet.node.store.tables import metadata
from conftest import DATABASES, database_url


@pytest.fixture(params=DATABASES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        request.getfixturevalue("pg_available")
    for url in database_url(request.param, tmp_path):
        s = Store(url)
        try:
            yield s
        finally:
            s.close()


def test_migrations_match_the_tables(store: Store) -> None:
    store.migrate()
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_migrating_twice_is_harmless(store: Store) -> None:
    store.migrate()
    store.migrate()
    tables = set(inspect(store.engine).get_table_names())
    assert {"jobs", "attempts", "pools", "providers", "tokens", "logs", "usage"} <= tables


def test_a_link_keeps_a_moving_average_of_the_rates_copies_measured(store: Store) -> None:
    """Samples too small to measure, or stating a rate no link has (a pool's report of a
    copy that took 1e-300 s), are not counted; the rest move the average by 0.3 each."""
    store.migrate()
    a, b = "cpi:local:p/a", "cpi:local:p/b"
    with store.write() as conn:
        assert links.record(conn, a, b, 100 << 20, 1.0)
        assert links.record(conn, a, b, 100 << 20, 2.0)
        assert not links.record(conn, a, b, 1000, 0.001)  # round trips, not a rate
        assert not links.record(conn, a, b, 1 << 50, 1e-300)
        assert not links.record(conn, a, b, 100 << 20, float("nan"))
        assert not links.record(conn, a, a, 100 << 20, 1.0)  # within one pool
    with store.read() as conn:
        [link] = links.list_all(conn)
        rates = links.rates(conn)
    rate = (100 << 20) + 0.3 * ((50 << 20) - (100 << 20))
    assert (link.source, link.destination, link.samples) == (a, b, 2)
    assert link.rate == pytest.approx(rate) and rates == {(a, b): pytest.approx(rate)}


def test_a_link_nothing_crossed_for_a_week_starts_afresh(store: Store) -> None:
    store.migrate()
    a, b = "cpi:local:p/a", "cpi:local:p/b"
    with store.write() as conn:
        links.record(conn, a, b, 10 << 20, 1.0)
        conn.execute(update(tables.links).values(updated_at=time.time() - links.KEPT - 60))
    with store.read() as conn:
        assert links.rates(conn) == {}  # unknown again
    with store.write() as conn:
        links.record(conn, a, b, 100 << 20, 1.0)
    with store.read() as conn:
        [link] = links.list_all(conn)
    assert (link.rate, link.samples) == (100 << 20, 1)  # not averaged with the old rate


def test_labels_stored_under_the_older_rule_read_back(store: Store) -> None:
    """A job stored before labels were bounded would fail every read of it (its listings,
    its pool's directives): the migration brings it within the rule."""
    from alembic import command

    from computenet.model import JobSpec
    from computenet.node.store import jobs as job_store
    from computenet.node.store.db import alembic_config

    store.migrate()
    with store.write() as conn:
        job = job_store.insert(conn, "t", JobSpec(command=["true"]))
        old = {"command": ["true"], "labels": {"a\nb": "x", "": "y", "k": "v" * 5000}}
        conn.execute(update(tables.jobs).where(tables.jobs.c.id == job.id).values(spec=old))
    cfg = alembic_config(store.engine)
    command.downgrade(cfg, "0012")
    command.upgrade(cfg, "head")
    with store.engine.connect() as conn:
        labels = job_store.get(conn, job.id, None).spec.labels
    assert labels == {"a\ufffdb": "x", "k": "v" * 4096}
