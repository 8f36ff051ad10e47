"""Alembic's environment for the archive: always run by `EventStore.create_schema` on a
connection it opened (inside its transaction, under PostgreSQL's advisory lock), never
from an alembic.ini."""

from __future__ import annotations

from alembic import context

from agentbus_event_archiver.store import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: batch mode copies the table (a no-op on PostgreSQL)
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
