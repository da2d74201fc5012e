"""Alembic environment: the engine comes from the node, never from an ini file."""

from __future__ import annotations

from alembic import context

from computenet.node.store.tables import metadata

engine = context.config.attributes.get("engine")


def run() -> None:
    if engine is None:
        raise RuntimeError("migrations run through computenet.node.store.db.migrate()")
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=metadata,
            render_as_batch=conn.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()


run()
