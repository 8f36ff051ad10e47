"""The archive's schema: Alembic migrations (`migrations/versions/`), run when the
archiver starts, on SQLite and PostgreSQL alike.

Three kinds of database are met:
- empty: upgraded from nothing to the head revision;
- an Alembic archive (table `alembic_version`): upgraded to the head; a revision this code
  does not know is a newer agentbus's, refused untouched (never downgraded);
- an archive of a release before Alembic (the hand-written version table `agentbus_schema`,
  or no version table at all for the first release): brought to that table's version 3 by
  the frozen steps below, which is revision 0001 exactly, stamped, the old table dropped,
  then upgraded to the head like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from agentbus_event_archiver.errors import ArchiveError

__all__ = ["LEGACY_PREFIX", "head_revision", "migrate"]

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
EVENTS: Final = "agent_events"
ALEMBIC_TABLE: Final = "alembic_version"
LEGACY_TABLE: Final = "agentbus_schema"
LEGACY_PREFIX: Final = "legacy-"
"""`migrate` reports a pre-Alembic archive of version n as "legacy-n"."""
_LEGACY_LAST: Final = 3
_LEGACY_AS_REVISION: Final = "0001"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, f"no revision in {MIGRATIONS_DIR}"
    return head


def current_revision(conn: Connection) -> str | None:
    if ALEMBIC_TABLE not in inspect(conn).get_table_names():
        return None
    found = conn.execute(text(f"SELECT version_num FROM {ALEMBIC_TABLE}")).scalar()
    return str(found) if found is not None else None


# --- before Alembic: frozen, they take an archive of version n-1 to n ------------------


def _legacy_2_archived_at(conn: Connection) -> None:
    if "archived_at" not in {c["name"] for c in inspect(conn).get_columns(EVENTS)}:
        kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
        conn.execute(text(f"ALTER TABLE {EVENTS} ADD COLUMN archived_at {kind}"))


def _legacy_3_history_index(conn: Connection) -> None:
    conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS ix_agent_events_job_order ON {EVENTS} "
            "(job_id, ts, stream_seq, event_id)"
        )
    )
    conn.execute(text("DROP INDEX IF EXISTS ix_agent_events_job_ts"))


_LEGACY_STEPS: Final = {2: _legacy_2_archived_at, 3: _legacy_3_history_index}


def _legacy_version(conn: Connection, tables: set[str]) -> int | None:
    if LEGACY_TABLE in tables:
        found = conn.execute(text(f"SELECT version FROM {LEGACY_TABLE}")).scalar()
        return int(found or 1)
    if EVENTS in tables:
        return 1  # the first release wrote no version
    return None


def migrate(conn: Connection, *, shown: str) -> str:
    """Bring the archive on `conn` (in a transaction) to the head revision; returns what
    was found: "" (empty), "legacy-<n>" (before Alembic) or the revision."""
    tables = set(inspect(conn).get_table_names())
    config = _config(conn)
    found: str
    if ALEMBIC_TABLE in tables:
        found = current_revision(conn) or ""
        if found and not _known(config, found):
            raise _newer(shown, f"revision {found}")
    elif (legacy := _legacy_version(conn, tables)) is not None:
        if legacy > _LEGACY_LAST:
            raise _newer(shown, f"schema version {legacy}")
        for step in range(legacy + 1, _LEGACY_LAST + 1):
            _LEGACY_STEPS[step](conn)
        command.stamp(config, _LEGACY_AS_REVISION)
        conn.execute(text(f"DROP TABLE IF EXISTS {LEGACY_TABLE}"))
        found = f"{LEGACY_PREFIX}{legacy}"
    else:
        found = ""
    command.upgrade(config, "head")
    return found


def _known(config: Config, revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except CommandError:  # "Can't locate revision": a newer agentbus wrote it
        return False


def _newer(shown: str, what: str) -> ArchiveError:
    return ArchiveError(
        f"the archive at {shown} has {what}, newer than this agentbus "
        f"(head {head_revision()}): upgrade agentbus (nothing was changed)"
    )
