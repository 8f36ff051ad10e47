"""The archive: agent events in SQL (SQLAlchemy async; SQLite by default, PostgreSQL by URL).

Writes are idempotent on the event id (INSERT .. ON CONFLICT DO NOTHING), so a batch that
is redelivered after a crash between commit and ack changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentbus.messages import AgentEvent
from event_archiver.errors import ArchiveError

__all__ = ["EVENTS_TABLE", "EventStore", "redact_url"]

metadata: Final = MetaData()

EVENTS_TABLE: Final = Table(
    "agent_events",
    metadata,
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


def redact_url(url: str) -> str:
    """The database URL without its password, for logs and errors."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class EventStore:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: AsyncEngine = create_async_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as e:
            raise ArchiveError(
                f"AGENTBUS_ARCHIVER__DATABASE_URL {redact_url(url)}: cannot open: {e}"
            ) from e
        self._dialect = self.engine.dialect.name

    async def create_schema(self) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        except (SQLAlchemyError, OSError) as e:
            raise ArchiveError(f"cannot create schema in {redact_url(self.url)}: {e}") from e

    def _insert(self) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(EVENTS_TABLE).on_conflict_do_nothing(
                index_elements=["event_id"]
            )
        if self._dialect == "sqlite":
            return sqlite.insert(EVENTS_TABLE).on_conflict_do_nothing(index_elements=["event_id"])
        raise ArchiveError(f"unsupported database dialect {self._dialect!r} (sqlite, postgresql)")

    async def insert(self, rows: Sequence[tuple[AgentEvent, str, int]]) -> int:
        """Insert (event, subject, stream sequence) rows in one transaction; returns the
        number of rows given (duplicates are skipped by the database)."""
        if not rows:
            return 0
        values = [
            {
                "event_id": ev.event_id,
                "stream_seq": seq,
                "ts": ev.ts,
                "agent_id": ev.agent_id,
                "service": ev.service,
                "kind": ev.kind.value,
                "job_id": ev.job_id,
                "task_id": ev.task_id,
                "subject": subject[:300],
                "data": json.dumps(ev.data, default=str),
            }
            for ev, subject, seq in rows
        ]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(self._insert(), values)
        except SQLAlchemyError as e:
            raise ArchiveError(f"insert into {EVENTS_TABLE.name} failed: {e}") from e
        return len(values)

    async def history(self, job_id: str, *, limit: int = 10_000) -> list[AgentEvent]:
        query = (
            select(EVENTS_TABLE)
            .where(EVENTS_TABLE.c.job_id == job_id)
            .order_by(EVENTS_TABLE.c.ts, EVENTS_TABLE.c.stream_seq)
            .limit(limit)
        )
        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(query)
                rows = result.mappings().all()
        except SQLAlchemyError as e:
            raise ArchiveError(f"history query on {EVENTS_TABLE.name} failed: {e}") from e
        return [_to_event(dict(r)) for r in rows]

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(EVENTS_TABLE))).scalar_one()
            )

    async def event_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(EVENTS_TABLE.c.event_id))
            return [str(r[0]) for r in result.all()]

    async def close(self) -> None:
        await self.engine.dispose()


def _to_event(row: dict[str, Any]) -> AgentEvent:
    ts: datetime = row["ts"]
    return AgentEvent(
        event_id=row["event_id"],
        agent_id=row["agent_id"],
        service=row["service"],
        kind=row["kind"],
        job_id=row["job_id"],
        task_id=row["task_id"],
        data=json.loads(row["data"]),
        ts=ts,
    )
