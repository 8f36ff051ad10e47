"""The archive as the last hand-versioned release left it (its schema version 3): the
events table, the index of paged history and the index by kind.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "agent_events",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("task_id", sa.String(128), nullable=True),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_agent_events_job_order", "agent_events", ["job_id", "ts", "stream_seq", "event_id"]
    )
    op.create_index("ix_agent_events_kind", "agent_events", ["kind"])


def downgrade() -> None:
    op.drop_table("agent_events")
