"""Persistence: SQLAlchemy tables, migrations and the one engine a node uses."""
