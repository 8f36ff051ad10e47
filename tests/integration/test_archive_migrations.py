"""The archive's schema through Alembic, on SQLite and PostgreSQL: a new archive's schema
is exactly the models' (no drift between `EVENTS_TABLE` and the revisions), every release
before Alembic (hand-written version table 1, 2, 3) is upgraded to that same schema with
its rows intact, and a later revision can add a column to an archive in use."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine

from agentbus.contract.messages import AgentEvent, EventKind
from agentbus_event_archiver import EventStore, schema
from agentbus_event_archiver.store import metadata, normalize_url

pytestmark = pytest.mark.integration

OLD = AgentEvent(
    event_id="ev-old",
    agent_id="worker-1",
    service="worker",
    kind=EventKind.TASK_COMPLETED,
    job_id="job-1",
    task_id="0-1",
    data={"i": 1, "text": "naïve"},
    ts=datetime(2025, 1, 1, tzinfo=UTC),
)


def _shape(sync_conn: Any) -> dict[str, Any]:
    """Columns (type, nullable) and indexes (columns) of the events table, and the tables."""
    insp = inspect(sync_conn)
    return {
        "tables": sorted(insp.get_table_names()),
        "columns": {
            c["name"]: (str(c["type"]), bool(c["nullable"]))
            for c in insp.get_columns("agent_events")
        },
        "indexes": {
            str(i["name"]): list(i["column_names"]) for i in insp.get_indexes("agent_events")
        },
    }


async def _legacy_archive(url: str, version: int) -> None:
    """An archive as the releases before Alembic left it at `version`, with one row."""
    parsed = normalize_url(url)
    if parsed.database and parsed.get_backend_name() == "sqlite":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    meta = MetaData()
    columns: list[Column[Any]] = [
        Column("event_id", String(128), primary_key=True),
        Column("stream_seq", BigInteger, nullable=False, default=0),
        Column("ts", DateTime(timezone=True), nullable=False),
        Column("agent_id", String(128), nullable=False),
        Column("service", String(128), nullable=False),
        Column("kind", String(64), nullable=False),
        Column("job_id", String(128), nullable=True),
        Column("task_id", String(128), nullable=True),
        Column("subject", String(300), nullable=False),
        Column("data", Text, nullable=False),
    ]
    if version >= 2:
        columns.append(Column("archived_at", DateTime(timezone=True), nullable=True))
    order: Index = (
        Index("ix_agent_events_job_order", "job_id", "ts", "stream_seq", "event_id")
        if version >= 3
        else Index("ix_agent_events_job_ts", "job_id", "ts")
    )
    table = Table("agent_events", meta, *columns, order, Index("ix_agent_events_kind", "kind"))
    engine = create_async_engine(parsed)
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(
            table.insert().values(
                event_id=OLD.event_id, stream_seq=5, ts=OLD.ts, agent_id=OLD.agent_id,
                service=OLD.service, kind=OLD.kind.value, job_id=OLD.job_id,
                task_id=OLD.task_id, subject="agent.worker-1.events", data=json.dumps(OLD.data),
            )
        )  # fmt: skip
        if version >= 2:
            await conn.execute(
                text("CREATE TABLE agentbus_schema (id INTEGER PRIMARY KEY, version INTEGER)")
            )
            await conn.execute(
                text("INSERT INTO agentbus_schema (id, version) VALUES (1, :v)"), {"v": version}
            )
    await engine.dispose()


async def _new_archive_shape(url: str) -> dict[str, Any]:
    store = EventStore(url)
    try:
        await store.create_schema()
        async with store.engine.connect() as conn:
            return await conn.run_sync(_shape)
    finally:
        await store.close()


async def test_a_new_archive_is_exactly_the_models(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        assert await store.create_schema() == ""
        assert await store.schema_revision() == schema.head_revision()

        def drift(sync_conn: Any) -> list[Any]:
            return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))

        async with store.engine.connect() as conn:
            assert await conn.run_sync(drift) == []
    finally:
        await store.close()


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_every_release_before_alembic_is_upgraded(
    database_url: str, tmp_path: Path, version: int, request: pytest.FixtureRequest
) -> None:
    await _legacy_archive(database_url, version)
    store = EventStore(database_url)
    try:
        assert await store.create_schema() == f"legacy-{version}"
        assert await store.schema_revision() == schema.head_revision()
        async with store.engine.connect() as conn:
            upgraded = await conn.run_sync(_shape)
        assert "agentbus_schema" not in upgraded["tables"]  # the hand-written table is gone
        assert await store.history("job-1") == [OLD]  # the old row, intact
        await store.insert([(OLD.model_copy(update={"event_id": "ev-new"}), "agent.w.events", 6)])
        assert await store.count() == 2
        assert await store.create_schema() == schema.head_revision()  # then as any other
    finally:
        await store.close()
    # the same schema as a new archive (a fresh SQLite file or PostgreSQL database)
    if database_url.startswith("sqlite"):
        fresh = f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'archive.db'}"
    else:
        fresh = request.getfixturevalue("postgres").create_database()
    assert upgraded == await _new_archive_shape(fresh)


def _with_a_later_revision(dest: Path) -> Path:
    """A copy of the migrations plus a revision 0003 as a later release would write it: a
    column and an index added to the events table."""
    copy = dest / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "0003_region.py").write_text(
        '"""region\n\nRevision ID: 0003\nRevises: 0002\n"""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "0003"\ndown_revision = "0002"\nbranch_labels = None\ndepends_on = None\n\n'
        "def upgrade():\n"
        '    with op.batch_alter_table("agent_events") as batch:\n'
        '        batch.add_column(sa.Column("region", sa.String(64), nullable=True))\n'
        '        batch.create_index("ix_agent_events_region", ["region"])\n\n'
        "def downgrade():\n"
        '    with op.batch_alter_table("agent_events") as batch:\n'
        '        batch.drop_index("ix_agent_events_region")\n'
        '        batch.drop_column("region")\n'
    )
    return copy


async def test_a_later_revision_adds_a_column_to_an_archive_in_use(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(database_url)
    try:
        assert await store.create_schema() == ""
        await store.insert([(OLD, "agent.worker-1.events", 5)])
    finally:
        await store.close()
    monkeypatch.setattr(schema, "MIGRATIONS_DIR", _with_a_later_revision(tmp_path))
    store = EventStore(database_url)
    try:
        assert await store.create_schema() == "0002"
        assert await store.schema_revision() == "0003"
        async with store.engine.connect() as conn:
            shape = await conn.run_sync(_shape)
            regions = (await conn.execute(text("SELECT region FROM agent_events"))).all()
        assert shape["columns"]["region"][1] is True
        assert shape["indexes"]["ix_agent_events_region"] == ["region"]
        assert regions == [(None,)]
        assert await store.history("job-1") == [OLD]  # the row, intact
    finally:
        await store.close()
