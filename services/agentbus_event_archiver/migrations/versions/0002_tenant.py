"""The job's tenant on every archived event (`data.tenant`; NULL when the event does not
say, as for every event archived before tenants).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # a nullable column, no backfill: an archive in use takes it in place (SQLite through
    # a batch, which Alembic turns into ALTER TABLE ADD COLUMN where the database can)
    with op.batch_alter_table("agent_events") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_events") as batch:
        batch.drop_column("tenant")
