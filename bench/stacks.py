"""Starting what a benchmark measures: the agentbus stack (its own processes, `Stack`) and
the raw floor (an embedded nats-server plus the `bench.raw` programs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from agentbus.contract import subjects
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import Stack
from bench.common import Proc, spawn_python, stop_proc

__all__ = [
    "FloorProcs",
    "agentbus_env",
    "agentbus_procs",
    "archiver_drained",
    "scratch_dir",
    "start_floor",
]


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A temporary data directory (JetStream store, logs, archive), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"agentbus-bench-{name}-"))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP_DATA"):
            shutil.rmtree(path, ignore_errors=True)


def agentbus_env(
    *, latency_ms: float, worker_concurrency: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        "AGENTBUS_SUMMARIZER__BACKEND": "simulated",
        "AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS": f"{latency_ms:g}",
        "AGENTBUS_WORKER__CONCURRENCY": str(worker_concurrency),
    }
    env.update(extra or {})
    return env


def agentbus_procs(stack: Stack, *, client_pid: int | None = None) -> list[Proc]:
    procs = [Proc(p.role, p.pid, p.agent_id) for p in stack.processes if p.pid is not None]
    if stack.server is not None and stack.server.pid is not None:
        procs.append(Proc("nats-server", stack.server.pid, "nats-server"))
    if client_pid is not None:
        procs.append(Proc("client", client_pid, "client"))
    return procs


async def archiver_drained(nc: NatsClient) -> bool:
    """True when the archiver's consumer has nothing pending and nothing unacked."""
    info = await nc.jetstream().consumer_info(
        subjects.AGENT_EVENTS_STREAM, subjects.ARCHIVER_CONSUMER
    )
    return not info.num_pending and not info.num_ack_pending


@dataclass
class FloorProcs:
    """The raw floor: an embedded nats-server and the floor programs we started."""

    server: EmbeddedNatsServer
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def measured(self, *, client_pid: int | None = None) -> list[Proc]:
        out = [Proc(name.rsplit("-", 1)[0], p.pid, name) for name, p in self.procs.items()]
        if self.server.pid is not None:
            out.append(Proc("nats-server", self.server.pid, "nats-server"))
        if client_pid is not None:
            out.append(Proc("client", client_pid, "client"))
        return out

    def start(self, name: str, role: str, *args: str, log_dir: Path) -> None:
        log = log_dir / f"{name}.log"
        self.logs[name] = log
        self.procs[name] = spawn_python("bench.raw", role, self.server.url, *args, log_path=log)

    def wait_ready(self, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for name, proc in self.procs.items():
            log = self.logs[name]
            while not (log.exists() and "ready" in log.read_text(errors="replace")):
                if proc.poll() is not None:
                    raise RuntimeError(f"floor {name} exited: {log.read_text(errors='replace')}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"floor {name} not ready within {timeout_s}s")
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_proc(proc)
        self.procs.clear()
        self.server.stop()


def start_floor(data_dir: Path) -> FloorProcs:
    return FloorProcs(server=EmbeddedNatsServer(store_dir=data_dir / "jetstream").start())


async def connect(url: str) -> NatsClient:
    return await nats.connect(url, name="bench-client")


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


def describe_stack(stack: Stack) -> dict[str, Any]:
    return {p.agent_id: p.role for p in stack.processes}
