"""SIGTERM stops every service within its grace period, whatever its connection is doing:
never connected (NATS unreachable), connected, or reconnecting after the server died.
Each service runs as a real `agentbus` process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from agentbus.bus.core import Bus
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import ServiceProcess, free_port

pytestmark = pytest.mark.integration

GRACE_S: Final = 3.0
EXIT_BOUND_S: Final = GRACE_S + 10.0
"""Generous to a loaded CPU; before the fix a service that never connected never exited."""
ROLES: Final = ("orchestrator", "worker", "archiver", "gateway")


def service_process(role: str, nats_url: str, tmp_path: Path) -> ServiceProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env |= {
        "AGENTBUS_NATS__URL": nats_url,
        "AGENTBUS_NATS__RECONNECT_WAIT_S": "0.2",
        "AGENTBUS_NATS__CONNECT_TIMEOUT_S": "0.5",
        "AGENTBUS_AGENT_ID": f"{role}-term",
        "AGENTBUS_HTTP__HOST": "127.0.0.1",
        "AGENTBUS_HTTP__PORT": str(port),
        "AGENTBUS_WORKER__GRACE_PERIOD_S": str(GRACE_S),
        "AGENTBUS_WORKER__FETCH_TIMEOUT_S": "0.5",
        "AGENTBUS_ARCHIVER__DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'archive.db'}",
        "AGENTBUS_LOG_FORMAT": "text",
        "AGENTBUS_GATEWAY__HOST": "127.0.0.1",
        "AGENTBUS_GATEWAY__PORT": str(free_port()),
    }
    return ServiceProcess(
        role=role, agent_id=f"{role}-term", http_port=port,
        log_path=tmp_path / f"{role}.log", env=env,
    )  # fmt: skip


@pytest.fixture
def stopped_after() -> Iterator[list[ServiceProcess]]:
    """Processes of the test, SIGKILLed (by pid) if a test left one running."""
    procs: list[ServiceProcess] = []
    yield procs
    for proc in procs:
        if proc.alive():
            assert proc.proc is not None
            proc.proc.kill()
            proc.proc.wait(5)


async def wait_until(proc: ServiceProcess, what: str, *, timeout_s: float = 30.0) -> None:
    """Until the service's log shows `what` (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while what not in proc.log_path.read_text(errors="replace"):
        assert proc.alive(), proc.log_path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {what!r} in the log of {proc.role}"
        await asyncio.sleep(0.05)


async def wait_ready(proc: ServiceProcess, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(proc.ready):
        assert proc.alive(), proc.log_path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"{proc.role} not ready"
        await asyncio.sleep(0.1)


async def sigterm_and_wait(proc: ServiceProcess) -> tuple[int | None, float]:
    """SIGTERM, then the exit code (None: still running after EXIT_BOUND_S) and seconds."""
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, EXIT_BOUND_S)
    return code, time.monotonic() - started


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ROLES)
async def test_sigterm_while_nats_is_unreachable(
    role: str, tmp_path: Path, stopped_after: list[ServiceProcess]
) -> None:
    closed = free_port()  # nothing listens there
    proc = service_process(role, f"nats://127.0.0.1:{closed}", tmp_path)
    stopped_after.append(proc)
    proc.start()
    await wait_until(proc, "cannot connect to NATS")
    code, took_s = await sigterm_and_wait(proc)
    log = proc.log_path.read_text(errors="replace")
    assert code == 0, f"exit {code} after {took_s:.1f}s\n{log[-3000:]}"
    assert took_s < EXIT_BOUND_S
    assert "stopping before NATS was reachable" in log and f"{role} stopped" in log
    assert "Traceback" not in log


@pytest.mark.timeout(90)
@pytest.mark.parametrize("role", ROLES)
async def test_sigterm_while_connected(
    role: str, settings: Settings, tmp_path: Path, stopped_after: list[ServiceProcess],
    bus: Bus,
) -> None:  # fmt: skip
    proc = service_process(role, settings.nats.url, tmp_path)
    stopped_after.append(proc)
    proc.start()
    await wait_ready(proc)
    code, took_s = await sigterm_and_wait(proc)
    log = proc.log_path.read_text(errors="replace")
    assert code == 0, f"exit {code} after {took_s:.1f}s\n{log[-3000:]}"
    assert f"{role} stopped" in log
    assert "Traceback" not in log


@pytest.mark.timeout(90)
@pytest.mark.parametrize("role", ROLES)
async def test_sigterm_while_reconnecting_after_the_server_died(
    role: str,
    nats_server: EmbeddedNatsServer,
    settings: Settings,
    tmp_path: Path,
    stopped_after: list[ServiceProcess],
    bus: Bus,
) -> None:
    proc = service_process(role, settings.nats.url, tmp_path)
    stopped_after.append(proc)
    proc.start()
    await wait_ready(proc)
    await asyncio.to_thread(nats_server.kill)
    await wait_until(proc, "disconnected from NATS")
    await asyncio.sleep(1.0)  # well into reconnecting: pulls and heartbeats fail meanwhile
    code, took_s = await sigterm_and_wait(proc)
    log = proc.log_path.read_text(errors="replace")
    assert code == 0, f"exit {code} after {took_s:.1f}s\n{log[-3000:]}"
    assert "Traceback" not in log


@pytest.mark.timeout(60)
def test_provision_never_waits_forever(tmp_path: Path) -> None:
    """`agentbus provision` (a Helm hook Job) gives up on an unreachable server by itself,
    with one line; SIGTERM while it tries ends it at once."""
    closed = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env |= {
        "AGENTBUS_NATS__URL": f"nats://127.0.0.1:{closed}",
        "AGENTBUS_NATS__CONNECT_TIMEOUT_S": "0.5",
        "AGENTBUS_NATS__RECONNECT_WAIT_S": "0.2",
    }
    argv = [sys.executable, "-m", "agentbus", "provision"]
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: cannot connect to NATS at nats://127.0.0.1:{closed}: "
        f"[Errno 111] Connect call failed ('127.0.0.1', {closed})"
    ]
    env["AGENTBUS_NATS__CONNECT_TIMEOUT_S"] = "30"
    proc = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.5)  # importing, then connecting
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(EXIT_BOUND_S)
        assert time.monotonic() - started < EXIT_BOUND_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
