"""Alembic migrations of the archive (`EventStore.create_schema` runs them at start).

A schema change is a new revision in `versions/` (`down_revision` = the current head),
written for both SQLite and PostgreSQL (batch operations on SQLite: `render_as_batch`);
tests/integration/test_archive_migrations.py upgrades every earlier schema to the head."""
