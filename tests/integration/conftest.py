"""Fixtures shared by the integration tests: a secured server, and the archive database
(SQLite, and PostgreSQL started on a random port where it is installed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.pgserver import PostgresServer, postgres_unavailable
from tests.security import SecureNats, start_secure_nats


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureNats]:
    """A nats-server with one user per service (generated permissions), stopped after."""
    s = start_secure_nats(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test module (skipped where it cannot run), stopped after."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with PostgresServer.running() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty archive database: once SQLite, once PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'archive.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()
