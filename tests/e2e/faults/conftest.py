"""Fixtures of the fault suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentbus.dev.embedded import EmbeddedNatsServer
from tests.e2e.faults.workload import BASE_ENV


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """Put the scenario's settings in this process's environment: the stack's provisioning
    (in this process) and every service process (which inherit it) see the same values."""

    def apply(**overrides: str) -> dict[str, str]:
        env = {**BASE_ENV, **overrides}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


@pytest.fixture
async def nats_single(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(store_dir=tmp_path / "js")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
