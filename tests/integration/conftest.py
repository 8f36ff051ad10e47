"""Fixtures shared by the integration tests that need a secured server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security import SecureNats, start_secure_nats


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureNats]:
    """A nats-server with one user per service (generated permissions), stopped after."""
    s = start_secure_nats(tmp_path)
    try:
        yield s
    finally:
        s.stop()
