"""The archive: agent events in SQL (SQLAlchemy async; SQLite by default, PostgreSQL by URL).

`AGENTBUS_ARCHIVER__DATABASE_URL` picks the database: `sqlite+aiosqlite:///path.db` (the
default) or `postgresql+asyncpg://user:password@host:5432/db` (`postgresql://` and
`postgres://` are read as asyncpg; install `agentbus[postgres]`).

Writes are idempotent on the event id (INSERT .. ON CONFLICT DO NOTHING), so a batch that
is redelivered after a crash between commit and ack changes nothing.

History is read in pages (`history_page`): keyset pagination on the total order
(ts, stream_seq, event_id) over the index `ix_agent_events_job_order`, see
`event_archiver.paging`.

The schema is created or migrated when the archiver starts (`create_schema`): Alembic
revisions (`event_archiver.schema`, `migrations/versions/`), which PostgreSQL runs under an
advisory lock, so replicas starting together migrate once. An archive whose revision is
newer than this code is refused (never downgraded, never dropped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
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
    event,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentbus.contract.messages import AgentEvent
from agentbus_event_archiver import schema
from agentbus_event_archiver.errors import ArchiveError
from agentbus_event_archiver.paging import HistoryKey

__all__ = [
    "EVENTS_TABLE",
    "HISTORY_ORDER",
    "EventStore",
    "normalize_url",
    "redact_url",
]

URL_SETTING: Final = "AGENTBUS_ARCHIVER__DATABASE_URL"
_MIGRATION_LOCK_ID: Final = 0x61676E7462  # "agntb": pg_advisory_xact_lock key

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
    Column("archived_at", DateTime(timezone=True), nullable=True),
    Column("tenant", String(64), nullable=True),
    Index("ix_agent_events_job_order", "job_id", "ts", "stream_seq", "event_id"),
    Index("ix_agent_events_kind", "kind"),
)
HISTORY_ORDER: Final = (EVENTS_TABLE.c.ts, EVENTS_TABLE.c.stream_seq, EVENTS_TABLE.c.event_id)
"""The total order of a job's history (`event_archiver.paging`), the tail of its index."""

_DRIVERS: Final = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def redact_url(url: str) -> str:
    """The database URL without its password, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def normalize_url(url: str) -> URL:
    """Parse the archive URL, mapping sync driver names onto the async ones."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ArchiveError(f"{URL_SETTING}: not a database URL: {e}") from e
    driver = _DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ArchiveError(
            f"{URL_SETTING}={redact_url(url)}: unsupported database "
            f"{parsed.get_backend_name()!r} (sqlite+aiosqlite or postgresql+asyncpg)"
        )
    return parsed


def _tenant_of(event: AgentEvent) -> str | None:
    """The `tenant` column: the event's `data.tenant` (job and task events say it)."""
    tenant = event.data.get("tenant")
    return tenant[:64] if isinstance(tenant, str) and tenant else None


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead logging: a commit appends to the WAL instead of rewriting pages through a
    rollback journal, several times cheaper per batch; `synchronous=FULL` keeps every
    committed (and so acked) event durable across a power loss too."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


class EventStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._shown = redact_url(url)
        parsed = normalize_url(url)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            options = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 5}
        try:
            self.engine: AsyncEngine = create_async_engine(parsed, **options)
        except ImportError as e:
            raise ArchiveError(
                f"{URL_SETTING}={self._shown}: the database driver is not installed ({e}); "
                "for PostgreSQL: pip install 'agentbus[postgres]'"
            ) from e
        except (SQLAlchemyError, ValueError) as e:
            raise ArchiveError(f"{URL_SETTING}={self._shown}: cannot open: {e}") from e
        self._dialect = self.engine.dialect.name
        if self._dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_wal)
        self._sqlite_path = (
            Path(parsed.database)
            if self._dialect == "sqlite" and parsed.database not in (None, "", ":memory:")
            else None
        )

    @property
    def dialect(self) -> str:
        return self._dialect

    async def create_schema(self) -> str:
        """Create the schema, or migrate it to the head revision; returns what was found
        before ("" for a new archive, "legacy-<n>" for one from before Alembic, else its
        revision). Raises `ArchiveError` for a newer archive."""
        if self._sqlite_path is not None:
            try:
                self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ArchiveError(f"{URL_SETTING}={self._shown}: {e}") from e
        try:
            async with self.engine.begin() as conn:
                if self._dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_ID}
                    )
                return await conn.run_sync(schema.migrate, shown=self._shown)
        except ArchiveError:
            raise
        except (SQLAlchemyError, OSError) as e:
            raise ArchiveError(f"cannot create or migrate the schema in {self._shown}: {e}") from e

    async def schema_revision(self) -> str | None:
        """The archive's Alembic revision (None before `create_schema`)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(schema.current_revision)

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
        now = datetime.now(UTC)
        values = [
            {
                "event_id": ev.event_id,
                "stream_seq": seq,
                "ts": _utc(ev.ts),
                "agent_id": ev.agent_id,
                "service": ev.service,
                "kind": ev.kind.value,
                "job_id": ev.job_id,
                "task_id": ev.task_id,
                "subject": subject[:300],
                "data": json.dumps(ev.data, default=str),
                "archived_at": now,
                "tenant": _tenant_of(ev),
            }
            for ev, subject, seq in rows
        ]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(self._insert(), values)
        except (SQLAlchemyError, OSError) as e:
            raise ArchiveError(
                f"insert into {EVENTS_TABLE.name} at {self._shown} failed: {e}"
            ) from e
        return len(values)

    async def history_page(
        self, job_id: str, *, after: HistoryKey | None = None, limit: int
    ) -> list[tuple[HistoryKey, AgentEvent]]:
        """At most `limit` events of a job after the key `after` (from the first without
        it), in history order, each with its key (keyset pagination, see the module doc)."""
        query = select(EVENTS_TABLE).where(EVENTS_TABLE.c.job_id == job_id)
        if after is not None:
            query = query.where(tuple_(*HISTORY_ORDER) > tuple(after))
        query = query.order_by(*HISTORY_ORDER).limit(limit)
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        except (SQLAlchemyError, OSError) as e:
            raise ArchiveError(f"history query on {EVENTS_TABLE.name} failed: {e}") from e
        page: list[tuple[HistoryKey, AgentEvent]] = []
        for r in rows:
            event = _to_event(dict(r))
            page.append((HistoryKey(event.ts, int(r["stream_seq"]), event.event_id), event))
        return page

    async def history(self, job_id: str, *, limit: int = 10_000) -> list[AgentEvent]:
        """The first `limit` events of a job, in history order."""
        return [event for _key, event in await self.history_page(job_id, limit=limit)]

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
        ts=_utc(ts),
    )
