"""The schema on disk is exactly what the code describes, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

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
