"""The same archive tests against SQLite and a real PostgreSQL server (started on a random
port; `database_url` in conftest): schema creation and migration, idempotent inserts,
history queries, and the event-archiver service end to end."""

from __future__ import annotations

import importlib.util
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
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

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import AgentEvent, EventKind, JobStatus
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import ArchiveError, EventArchiver, EventStore
from agentbus_event_archiver.schema import head_revision
from agentbus_event_archiver.store import normalize_url, redact_url
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import archived_history

pytestmark = pytest.mark.integration


def event(i: int, *, job_id: str = "job-1", ts: datetime | None = None) -> AgentEvent:
    return AgentEvent(
        event_id=f"ev-{i}",
        agent_id="worker-1",
        service="worker",
        kind=EventKind.TASK_COMPLETED if i % 2 else EventKind.TASK_STARTED,
        job_id=job_id,
        task_id=f"0-{i}",
        data={"i": i, "text": "naïve ünïcode \u2603", "nested": {"list": [1, 2.5, None]}},
        ts=ts or datetime(2025, 1, 1, tzinfo=UTC) + timedelta(milliseconds=i),
    )


async def test_schema_is_created_once(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        assert await store.create_schema() == ""  # a new archive
        assert await store.schema_revision() == head_revision()
        assert await store.create_schema() == head_revision()  # idempotent
        assert await store.count() == 0
    finally:
        await store.close()


async def test_insert_is_idempotent_and_history_is_ordered(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        await store.create_schema()
        events = [event(i) for i in range(50)]
        rows = [(e, f"agent.worker-1.events.{e.event_id}", 100 + i) for i, e in enumerate(events)]
        # out of order, twice, and overlapping: every event is stored once
        await store.insert(rows[25:])
        await store.insert(rows[:30])
        await store.insert(rows)
        await store.insert([(event(1000, job_id="job-2"), "agent.worker-1.events", 1)])
        assert await store.count() == 51
        history = await store.history("job-1")
        assert history == events  # same ids, kinds, data and (UTC) timestamps, in order
        assert all(e.ts.tzinfo is not None for e in history)
        assert [e.event_id for e in await store.history("job-1", limit=3)] == [
            "ev-0",
            "ev-1",
            "ev-2",
        ]
        assert [e.event_id for e in await store.history("job-2")] == ["ev-1000"]
        assert await store.history("no-such-job") == []
        # a naive timestamp is taken as UTC on every backend
        naive = event(2000, job_id="job-3", ts=datetime(2025, 6, 1, 12, 0, 0))
        await store.insert([(naive, "agent.x.events", 7)])
        (back,) = await store.history("job-3")
        assert back.ts == datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    finally:
        await store.close()


def _legacy_table(meta: MetaData) -> Table:
    """The events table as the first release created it (no version table)."""
    return Table(
        "agent_events",
        meta,
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
        Index("ix_agent_events_job_ts", "job_id", "ts"),
        Index("ix_agent_events_kind", "kind"),
    )


async def test_an_archive_of_the_first_release_is_migrated(database_url: str) -> None:
    url = normalize_url(database_url)
    if url.database and url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    meta = MetaData()
    legacy = _legacy_table(meta)
    old = event(1)
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(
            legacy.insert().values(
                event_id=old.event_id, stream_seq=5, ts=old.ts, agent_id=old.agent_id,
                service=old.service, kind=old.kind.value, job_id=old.job_id,
                task_id=old.task_id, subject="agent.worker-1.events",
                data=json.dumps(old.data),
            )
        )  # fmt: skip
    await engine.dispose()

    store = EventStore(database_url)
    try:
        assert await store.create_schema() == "legacy-1"  # the unversioned first release
        assert await store.schema_revision() == head_revision()

        def columns(sync_conn: Any) -> set[str]:
            return {c["name"] for c in inspect(sync_conn).get_columns("agent_events")}

        async with store.engine.connect() as conn:
            assert "archived_at" in await conn.run_sync(columns)
        assert await store.history("job-1") == [old]  # the old row is intact
        await store.insert([(event(2), "agent.worker-1.events", 6)])
        assert [e.event_id for e in await store.history("job-1")] == ["ev-1", "ev-2"]
        assert await store.create_schema() == head_revision()
    finally:
        await store.close()


async def test_a_newer_archive_is_refused_untouched(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        await store.create_schema()
        await store.insert([(event(1), "agent.worker-1.events", 1)])
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(ArchiveError, match="has revision 9999, newer than") as info:
            await store.create_schema()
        assert "password" not in str(info.value)
        assert await store.count() == 1
    finally:
        await store.close()


@pytest.mark.timeout(90)
async def test_archiver_service_stores_every_event_once(
    database_url: str, bus: Bus, settings: Settings, running: Any
) -> None:
    s = settings.model_copy(
        update={
            "archiver": settings.archiver.model_copy(update={"database_url": database_url}),
            "orchestrator": settings.orchestrator.model_copy(
                update={"chunk_chars": 600, "chunk_summary_chars": 200, "summary_chars": 300}
            ),
        }
    )
    await running.start(Orchestrator, s, "arch-orch")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "arch-w1")
    archiver = await running.start(EventArchiver, s, "arch-1")
    text_ = "\n\n".join(
        f"Paragraph {i}: the archive keeps every event. It answers history queries."
        for i in range(30)
    )
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text_)
        state = await client.wait(job_id, timeout_s=60)
        assert state.status is JobStatus.COMPLETED, state.error
        history = await archived_history(client, job_id)
    kinds = [e.kind for e in history]
    assert kinds[0] is EventKind.JOB_ACCEPTED and kinds[-1] is EventKind.JOB_COMPLETED
    assert state.chunks > 1
    assert kinds.count(EventKind.TASK_COMPLETED) == state.tasks_done_total
    assert len({e.event_id for e in history}) == len(history)  # once each
    assert isinstance(archiver, EventArchiver)
    assert archiver.store.dialect == database_url.split("+", 1)[0]


def test_urls_are_read_and_redacted() -> None:
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert redact_url("postgresql+asyncpg://u:secret@h/db") == "postgresql+asyncpg://u:***@h/db"
    with pytest.raises(ArchiveError, match="AGENTBUS_ARCHIVER__DATABASE_URL: not a database URL"):
        EventStore("not a url")
    with pytest.raises(ArchiveError, match="unsupported database 'mysql'"):
        EventStore("mysql+aiomysql://u:secret@h/db")


async def test_unreachable_postgres_is_one_clear_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("asyncpg") is None:
        pytest.skip("asyncpg is not installed (pip install 'agentbus[postgres]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    store = EventStore(f"postgresql+asyncpg://u:secret@127.0.0.1:{port}/db")
    try:
        with pytest.raises(ArchiveError, match=r"cannot create or migrate the schema") as info:
            await store.create_schema()
        assert "secret" not in str(info.value) and "u:***@127.0.0.1" in str(info.value)
    finally:
        await store.close()
